//! NDJSON destinations (`--json`, `--records`): whole lines only, on their way within
//! [`FLUSH_EVERY`] of being written, and a write error that never stops detection.
//!
//! - Lines collect in a buffer that goes out when the output thread is idle or
//!   [`FLUSH_EVERY`] after the oldest buffered line, whichever comes first: a reader (`tail -f |
//!   jq`, Vector, Filebeat) sees an event within 100 ms, and `kill -9` loses at most that much.
//! - A buffer goes out as one `write_all` of whole lines. If a file write fails midway (a full
//!   disk), the file is cut back to the end of the last whole line: no reader ever meets half a
//!   line. The first error is logged at once, later ones once a minute; each is counted
//!   (`errors`, `lines_lost`) and the run goes on.
//! - `reopen` (SIGHUP, logrotate's `postrotate`) creates the file anew at its path.

use std::{
    fs::{File, OpenOptions},
    io::{self, Write},
    os::fd::AsFd,
    path::PathBuf,
    time::{Duration, Instant},
};

use serde::Serialize;

/// The longest a written line waits in the buffer.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// A buffer this full goes out at once.
const FLUSH_BYTES: usize = 256 * 1024;
const ERROR_LOG_EVERY: Duration = Duration::from_secs(60);

/// Where NDJSON goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JsonSink {
    Stdout,
    File(PathBuf),
}

impl JsonSink {
    /// `-` is stdout, anything else a file path.
    pub fn parse(s: &str) -> Self {
        if s == "-" {
            Self::Stdout
        } else {
            Self::File(PathBuf::from(s))
        }
    }

    fn name(&self) -> String {
        match self {
            Self::Stdout => "stdout".to_owned(),
            Self::File(p) => p.display().to_string(),
        }
    }
}

enum Out {
    Stdout(io::Stdout),
    File(File),
    Memory(Vec<u8>),
}

/// Writes `buf` (whole lines) to `w`. If a write fails partway (a full disk), the output is cut
/// back to its last whole line where it can be (a file, stdout redirected to one; a pipe cannot
/// be cut), and the lines that did get through are taken off `pending`.
fn write_whole_lines<W: Write + AsFd>(w: &mut W, buf: &[u8], pending: &mut u64) -> io::Result<()> {
    let mut done = 0;
    let r = loop {
        if done == buf.len() {
            break w.flush();
        }
        match w.write(&buf[done..]) {
            Ok(0) => break Err(io::Error::from(io::ErrorKind::WriteZero)),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
    };
    if r.is_err() && done > 0 {
        let keep = buf[..done]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        *pending -= buf[..keep].iter().filter(|&&b| b == b'\n').count() as u64;
        if let Ok(pos) = nix::unistd::lseek(w.as_fd(), 0, nix::unistd::Whence::SeekCur) {
            let _ = nix::unistd::ftruncate(w.as_fd(), pos - (done - keep) as i64);
        }
    }
    r
}

/// A line-oriented NDJSON writer (module docs).
pub struct LineSink {
    target: JsonSink,
    out: Out,
    buf: Vec<u8>,
    /// Lines in `buf`.
    pending: u64,
    /// When the oldest line in `buf` was written.
    oldest: Option<Instant>,
    /// Failed writes, and the lines they lost.
    pub errors: u64,
    pub lines_lost: u64,
    /// The reader of stdout went away (`| head`): nothing more can be written.
    pub closed: bool,
    last_error_log: Option<Instant>,
    /// A reopen failed (its directory is gone): lines are dropped and counted, and the reopen
    /// is retried every [`REOPEN_RETRY`].
    reopen_failed_at: Option<Instant>,
}

const REOPEN_RETRY: Duration = Duration::from_secs(10);

/// Opens for appending: a restart (systemd's `Restart=`) keeps what earlier runs wrote, and a
/// file truncated from outside (`copytruncate`, `: > file`) is written from its new end.
fn open_file(p: &PathBuf) -> io::Result<File> {
    let mut o = OpenOptions::new();
    o.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o640);
    o.open(p)
}

impl LineSink {
    /// Opens `target` (a file is appended to, created mode 0640).
    pub fn open(target: &JsonSink) -> anyhow::Result<Self> {
        let out =
            match target {
                JsonSink::Stdout => Out::Stdout(io::stdout()),
                JsonSink::File(p) => Out::File(open_file(p).map_err(|e| {
                    anyhow::anyhow!("cannot create output file {}: {e}", p.display())
                })?),
            };
        Ok(Self {
            target: target.clone(),
            out,
            buf: Vec::with_capacity(64 * 1024),
            pending: 0,
            oldest: None,
            errors: 0,
            lines_lost: 0,
            closed: false,
            last_error_log: None,
            reopen_failed_at: None,
        })
    }

    /// Lines kept in memory (tests, the fuzz target): see [`LineSink::take_memory`].
    pub fn memory() -> Self {
        Self {
            target: JsonSink::Stdout,
            out: Out::Memory(Vec::new()),
            buf: Vec::new(),
            pending: 0,
            oldest: None,
            errors: 0,
            lines_lost: 0,
            closed: false,
            last_error_log: None,
            reopen_failed_at: None,
        }
    }

    /// What an in-memory sink holds, flushed.
    pub fn take_memory(&mut self) -> Vec<u8> {
        self.flush();
        match &mut self.out {
            Out::Memory(m) => std::mem::take(m),
            _ => Vec::new(),
        }
    }

    /// Buffers `value` as one line; sends the buffer when it is large.
    pub fn line(&mut self, value: &impl Serialize) {
        if self.closed {
            return;
        }
        let start = self.buf.len();
        if serde_json::to_writer(&mut self.buf, value).is_err() {
            self.buf.truncate(start);
            return;
        }
        self.buf.push(b'\n');
        self.pending += 1;
        self.oldest.get_or_insert_with(Instant::now);
        if self.buf.len() >= FLUSH_BYTES {
            self.flush();
        }
    }

    /// Sends the buffer if its oldest line has waited [`FLUSH_EVERY`].
    pub fn flush_if_due(&mut self) {
        if self.oldest.is_some_and(|t| t.elapsed() >= FLUSH_EVERY) {
            self.flush();
        }
    }

    /// Sends every buffered line now.
    pub fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        if self
            .reopen_failed_at
            .is_some_and(|t| t.elapsed() >= REOPEN_RETRY)
        {
            self.reopen();
        }
        if self.reopen_failed_at.is_some() {
            self.lines_lost += self.pending;
            self.buf.clear();
            self.pending = 0;
            self.oldest = None;
            return;
        }
        let r = match &mut self.out {
            Out::Stdout(s) => write_whole_lines(&mut s.lock(), &self.buf, &mut self.pending),
            Out::File(f) => write_whole_lines(f, &self.buf, &mut self.pending),
            Out::Memory(m) => {
                m.extend_from_slice(&self.buf);
                Ok(())
            }
        };
        if let Err(e) = r {
            self.failed(e);
        }
        self.buf.clear();
        self.pending = 0;
        self.oldest = None;
    }

    fn failed(&mut self, e: io::Error) {
        if e.kind() == io::ErrorKind::BrokenPipe {
            self.closed = true;
            return;
        }
        self.errors += 1;
        self.lines_lost += self.pending;
        if self
            .last_error_log
            .is_none_or(|t| t.elapsed() >= ERROR_LOG_EVERY)
        {
            self.last_error_log = Some(Instant::now());
            tracing::error!(
                output = %self.target.name(),
                error = %e,
                errors = self.errors,
                lines_lost = self.lines_lost,
                "cannot write NDJSON output; detection goes on, these lines are lost"
            );
        }
    }

    /// Creates the file anew at its path (after logrotate moved it away); stdout stays. If that
    /// fails (its directory is gone) the old handle is dropped — lines would vanish into an
    /// unlinked file — and lines are counted as lost until a retry succeeds.
    pub fn reopen(&mut self) {
        if self.reopen_failed_at.is_none() {
            self.flush();
        }
        let JsonSink::File(p) = &self.target else {
            return;
        };
        match open_file(p) {
            Ok(f) => {
                self.out = Out::File(f);
                self.reopen_failed_at = None;
                tracing::info!(output = %p.display(), "reopened");
            }
            Err(e) => {
                self.out = Out::Memory(Vec::new());
                self.reopen_failed_at = Some(Instant::now());
                self.failed(e);
            }
        }
    }
}

impl Drop for LineSink {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_wait_at_most_the_flush_period_and_go_out_whole() {
        let dir = std::env::temp_dir().join(format!("synscope-sink-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("a.ndjson");
        let mut s = LineSink::open(&JsonSink::File(p.clone())).unwrap();
        s.line(&serde_json::json!({"n": 1}));
        s.flush_if_due();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "", "buffered");
        std::thread::sleep(FLUSH_EVERY);
        s.flush_if_due();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "{\"n\":1}\n");
        // Rotation: the file moves away, reopen creates it anew.
        std::fs::rename(&p, dir.join("a.ndjson.1")).unwrap();
        s.line(&serde_json::json!({"n": 2}));
        s.reopen();
        s.line(&serde_json::json!({"n": 3}));
        s.flush();
        assert_eq!(
            std::fs::read_to_string(dir.join("a.ndjson.1")).unwrap(),
            "{\"n\":1}\n{\"n\":2}\n"
        );
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "{\"n\":3}\n");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
