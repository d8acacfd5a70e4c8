//! Where a user's records belong: Kafka's default (murmur2) key partitioner over the decimal
//! user id, exactly as Java clients and librdkafka's `murmur2_random` compute it.
//!
//! A user's state lives in exactly one partition; a record sitting elsewhere is rejected
//! (`wrong_partition`) rather than splitting that user's state in two.

use super::event::UserId;

/// Kafka's murmur2 (the Java client's `Utils.murmur2`, seed `0x9747b28c`).
pub fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let length = data.len();
    let mut h: u32 = SEED ^ (length as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// The partition Kafka's default partitioner gives the key `key` among `partitions`.
pub fn partition_for_key(key: &[u8], partitions: i32) -> i32 {
    debug_assert!(partitions > 0);
    ((murmur2(key) & 0x7fff_ffff) % partitions.max(1) as u32) as i32
}

/// The partition a user's records belong to: the key is the decimal user id.
pub fn partition_for_user(user_id: UserId, partitions: i32) -> i32 {
    let mut buf = itoa::Buffer::new();
    partition_for_key(buf.format(user_id.get()).as_bytes(), partitions)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values from the Java client's `UtilsTest.testMurmur2` and librdkafka's unit test.
    #[test]
    fn murmur2_matches_the_java_client() {
        let cases: [(&[u8], i32); 7] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
            (b"", 275_646_681),
        ];
        for (key, want) in cases {
            assert_eq!(
                murmur2(key) as i32,
                want,
                "{:?}",
                String::from_utf8_lossy(key)
            );
        }
    }

    #[test]
    fn a_user_maps_to_one_partition_in_range() {
        for user in 0..1000u64 {
            let p = partition_for_user(UserId::new(user).unwrap(), 6);
            assert!((0..6).contains(&p));
            assert_eq!(p, partition_for_user(UserId::new(user).unwrap(), 6));
        }
        assert_eq!(partition_for_user(UserId::new(7).unwrap(), 1), 0);
    }
}
