//! Sequence-number and timestamp arithmetic modulo 2^32.

/// `a` before `b` in sequence space (RFC 9293 §3.4).
pub fn seq_lt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// Whether `tsval` is older than `ts_recent` the way PAWS sees it (RFC 7323 §5; Linux
/// `tcp_paws_check`: `(s32)(ts_recent - tsval) > TCP_PAWS_WINDOW`, the window being 1).
pub fn ts_older(ts_recent: u32, tsval: u32) -> bool {
    (ts_recent.wrapping_sub(tsval) as i32) > 1
}

/// Whether a server in SYN_RECV drops a RST carrying `tsval` by PAWS against the SYN's
/// `ts_recent` (Linux `tcp_check_req` → `tcp_paws_reject` → `tcp_paws_check(rx_opt, 0)`): a
/// window of 0, and never when `ts_recent` is 0.
pub fn syn_recv_paws_reject(ts_recent: u32, tsval: u32) -> bool {
    ts_recent != 0 && (ts_recent.wrapping_sub(tsval) as i32) > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_space_wraps() {
        assert!(seq_lt(u32::MAX - 5, 3));
        assert!(!seq_lt(3, u32::MAX - 5));
        assert!(!seq_lt(7, 7));
    }

    #[test]
    fn syn_recv_paws_has_no_window_and_exempts_a_zero_ts_recent() {
        assert!(syn_recv_paws_reject(1_000_000, 999_999));
        assert!(!syn_recv_paws_reject(1_000_000, 1_000_000));
        assert!(syn_recv_paws_reject(1_000_000, 0));
        assert!(!syn_recv_paws_reject(0, 5));
    }

    #[test]
    fn paws_treats_zero_and_far_past_as_older_but_not_one_tick() {
        assert!(ts_older(1_000_000, 0));
        assert!(ts_older(1_000_000, 999_000));
        assert!(!ts_older(1_000_000, 999_999), "within the PAWS window of 1");
        assert!(!ts_older(1_000_000, 1_000_001));
        // A ts_recent past 2^31 makes TSval 0 look newer (s32 arithmetic), as in the kernel.
        assert!(!ts_older(0x8000_0001, 0));
    }
}
