//! Which of Redis Cluster's 16 384 slots a key lives in.

/// Slots in a Redis Cluster.
pub const SLOTS: u16 = 16_384;

/// The slot of `key`: CRC16 (XMODEM) of its hash tag — the part between the first `{` and the
/// next `}` when that is not empty — or of the whole key, mod 16 384 (the cluster spec's
/// `HASH_SLOT`). Every flashcart key starts with its partition's tag, `{fc:p07}`.
pub fn key_slot(key: &[u8]) -> u16 {
    crc16::State::<crc16::XMODEM>::calculate(hashed_part(key)) % SLOTS
}

fn hashed_part(key: &[u8]) -> &[u8] {
    let Some(open) = key.iter().position(|&b| b == b'{') else {
        return key;
    };
    match key[open + 1..].iter().position(|&b| b == b'}') {
        Some(0) | None => key,
        Some(len) => &key[open + 1..open + 1 + len],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_cluster_keyslot() {
        // Values from `CLUSTER KEYSLOT` on redis-server 7.0.
        for (key, slot) in [
            ("foo", 12_182),
            ("bar", 5_061),
            ("", 0),
            ("{user1000}.following", 3_443),
            ("{user1000}.followers", 3_443),
            ("foo{}{bar}", 8_363),
            ("foo{{bar}}zap", 4_015),
            ("foo{bar}{zap}", 5_061),
            ("{fc:p00}:sku:x", 2_683),
            ("{fc:p07}:events", 15_004),
            ("{fc:p15}", 10_735),
        ] {
            assert_eq!(key_slot(key.as_bytes()), slot, "{key}");
        }
    }
}
