//! Reading records out of a BPF ring buffer: wait on its fd, then drain.

use std::{os::fd::AsFd, time::Duration};

use aya::maps::{MapData, RingBuf};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

/// Waits up to `timeout` for records, then hands every available one to `f`. Returns how
/// many records were drained.
/// Records taken per call at most.
pub const MAX_BATCH: usize = 8192;

pub fn drain(
    ring: &mut RingBuf<MapData>,
    timeout: Duration,
    mut f: impl FnMut(&[u8]),
) -> std::io::Result<usize> {
    let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    {
        let mut fds = [PollFd::new(ring.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    // Bounded, so that a ring that never runs dry still lets the worker tick (timers, events).
    let mut n = 0;
    while n < MAX_BATCH
        && let Some(item) = ring.next()
    {
        f(&item);
        n += 1;
    }
    Ok(n)
}
