//! The symmetric flow hash: both directions of a connection hash to the same value, so the
//! kernel can pick one worker per flow and userspace can recompute it for offline input.

/// Folds an address (4 bytes for IPv4, 16 for IPv6) into 32 bits.
#[inline(always)]
pub fn fold_addr(words: &[u32]) -> u32 {
    let mut h = 0u32;
    let mut i = 0;
    while i < words.len() {
        h = h.rotate_left(5) ^ words[i];
        i += 1;
    }
    h
}

/// Hash of (addr_a, port_a) ↔ (addr_b, port_b), the same for either order.
///
/// The endpoints are put in a canonical order before mixing, so the result does not depend on
/// direction; the final mix is murmur3's fmix32, enough to spread flows over workers and table
/// slots (the userspace flow table adds its own random seed against chosen 5-tuples).
#[inline(always)]
pub fn symmetric_flow_hash(addr_a: u32, port_a: u16, addr_b: u32, port_b: u16) -> u32 {
    let ka = ((addr_a as u64) << 16) | port_a as u64;
    let kb = ((addr_b as u64) << 16) | port_b as u64;
    let (lo, hi) = if ka <= kb { (ka, kb) } else { (kb, ka) };
    let mut h = (lo as u32) ^ ((lo >> 32) as u32).wrapping_mul(0x9e37_79b1);
    h = h.rotate_left(13) ^ (hi as u32).wrapping_mul(0x85eb_ca6b) ^ ((hi >> 32) as u32);
    fmix32(h)
}

#[inline(always)]
fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_symmetric() {
        let a = fold_addr(&[0x0a00_0001]);
        let b = fold_addr(&[0x0a00_0002]);
        assert_eq!(
            symmetric_flow_hash(a, 40000, b, 80),
            symmetric_flow_hash(b, 80, a, 40000)
        );
        assert_ne!(
            symmetric_flow_hash(a, 40000, b, 80),
            symmetric_flow_hash(a, 40001, b, 80)
        );
    }
}
