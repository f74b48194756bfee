//! Reading records out of a BPF ring buffer: wait on its fd, then drain.

use std::{os::fd::AsFd, time::Duration};

use aya::maps::{MapData, RingBuf};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

/// Waits up to `timeout` for records, then hands every available one to `f`. Returns how
/// many records were drained.
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
    let mut n = 0;
    while let Some(item) = ring.next() {
        f(&item);
        n += 1;
    }
    Ok(n)
}
