//! The counter-based hash behind every reproducible random choice of a run: drop
//! decisions, data order and augmentation, the per-step block assignment. A choice is a
//! pure function of the seed and its coordinates, so any rank can compute any other's
//! without communication, in any order.

/// SplitMix64's finaliser: a bijective mix with full avalanche, the standard building
/// block of counter-based generators.
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Hashes a sequence of words into one 64-bit value by chaining [`mix64`].
pub fn hash_words(words: &[u64]) -> u64 {
    words
        .iter()
        .fold(0x5250_535F_4452_4F50, |h, &w| mix64(h ^ w))
}

/// Hashes bytes (the tail zero-padded to a word) with [`hash_words`]' chain.
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h = hash_words(&[bytes.len() as u64]);
    for chunk in bytes.chunks(8) {
        let mut w = [0u8; 8];
        w[..chunk.len()].copy_from_slice(chunk);
        h = mix64(h ^ u64::from_le_bytes(w));
    }
    h
}
