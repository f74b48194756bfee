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

/// Keyed hash of (addr_a, port_a) ↔ (addr_b, port_b), the same for either order.
///
/// The endpoints are put in a canonical order, then mixed by HalfSipHash-1-3 under `key`, a
/// secret the loader draws at load time: flows pick workers (`hash % N`) and follow slots by it,
/// and an attacker who chooses 4-tuples cannot aim them all at one worker without the key
/// (unkeyed, chosen tuples put 196,608 records on worker 0 and none on worker 1).
#[inline(always)]
pub fn symmetric_flow_hash(
    key: [u32; 2],
    addr_a: u32,
    port_a: u16,
    addr_b: u32,
    port_b: u16,
) -> u32 {
    let ka = ((addr_a as u64) << 16) | port_a as u64;
    let kb = ((addr_b as u64) << 16) | port_b as u64;
    let (lo, hi) = if ka <= kb { (ka, kb) } else { (kb, ka) };
    let mut v = [key[0], key[1], 0x6c79_6765 ^ key[0], 0x7465_6462 ^ key[1]];
    let m = [lo as u32, (lo >> 32) as u32, hi as u32, (hi >> 32) as u32];
    let mut i = 0;
    while i < 4 {
        v[3] ^= m[i];
        sip_round(&mut v);
        v[0] ^= m[i];
        i += 1;
    }
    v[2] ^= 0xff;
    sip_round(&mut v);
    sip_round(&mut v);
    sip_round(&mut v);
    v[1] ^ v[3]
}

#[inline(always)]
fn sip_round(v: &mut [u32; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(5) ^ v[0];
    v[0] = v[0].rotate_left(16);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(8) ^ v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(7) ^ v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13) ^ v[2];
    v[2] = v[2].rotate_left(16);
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: [u32; 2] = [0x1234_5678, 0x9abc_def0];

    #[test]
    fn hash_is_symmetric() {
        let a = fold_addr(&[0x0a00_0001]);
        let b = fold_addr(&[0x0a00_0002]);
        assert_eq!(
            symmetric_flow_hash(K, a, 40000, b, 80),
            symmetric_flow_hash(K, b, 80, a, 40000)
        );
        assert_ne!(
            symmetric_flow_hash(K, a, 40000, b, 80),
            symmetric_flow_hash(K, a, 40001, b, 80)
        );
    }

    #[test]
    fn tuples_chosen_to_collide_under_one_key_spread_under_another() {
        let (a, b) = (fold_addr(&[0xc612_0001]), fold_addr(&[0x0a00_0002]));
        // An attacker who knew key K picks 4,096 source ports that all land on worker 0 of 2.
        let chosen: std::vec::Vec<u16> = (1024..u16::MAX)
            .filter(|&p| symmetric_flow_hash(K, a, p, b, 80).is_multiple_of(2))
            .take(4096)
            .collect();
        assert_eq!(chosen.len(), 4096);
        // Under the key actually drawn at load time they spread evenly.
        let other = [0x0bad_cafe, 0x5eed_f00d];
        let on0 = chosen
            .iter()
            .filter(|&&p| symmetric_flow_hash(other, a, p, b, 80).is_multiple_of(2))
            .count();
        assert!((1800..2300).contains(&on0), "{on0} of 4096 on worker 0");
    }
}
