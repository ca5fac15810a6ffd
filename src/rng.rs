//! Random numbers that every backend can reproduce exactly.
//!
//! - [`philox4x32`]: the counter-based Philox4x32-10 generator (Salmon et
//!   al., SC'11). Dropout masks are a pure function of (seed, counter), so the
//!   CUDA kernels compute the same masks as the CPU without storing them.
//! - [`attention_dropout_words`]: the same generator laid out for the
//!   attention probabilities, one call per 2 x 2 block of a head's
//!   `T x T` matrix (see there), so the fused kernels draw each mask word
//!   where their tensor-core fragments hold the element.
//! - [`HostRng`]: a small seeded generator (SplitMix64) for initialization,
//!   data order and the agent's exploration. Its whole state is one `u64`, so
//!   checkpoints save and restore it exactly.

const PHILOX_M0: u32 = 0xD251_1F53;
const PHILOX_M1: u32 = 0xCD9E_8D57;
const PHILOX_W0: u32 = 0x9E37_79B9;
const PHILOX_W1: u32 = 0xBB67_AE85;

/// Philox4x32 with 10 rounds. `counter` is four 32-bit words, `key` two.
pub fn philox4x32(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mut c = counter;
    let mut k = key;
    for round in 0..10 {
        if round > 0 {
            k[0] = k[0].wrapping_add(PHILOX_W0);
            k[1] = k[1].wrapping_add(PHILOX_W1);
        }
        let p0 = (PHILOX_M0 as u64) * (c[0] as u64);
        let p1 = (PHILOX_M1 as u64) * (c[2] as u64);
        c = [
            ((p1 >> 32) as u32) ^ c[1] ^ k[0],
            p1 as u32,
            ((p0 >> 32) as u32) ^ c[3] ^ k[1],
            p0 as u32,
        ];
    }
    c
}

/// A uniform float in [0, 1) for element `index` of the stream `seed`:
/// the first Philox word's top 24 bits.
pub fn philox_uniform(seed: u64, index: u64) -> f32 {
    let out = philox4x32(
        [index as u32, (index >> 32) as u32, 0, 0],
        [seed as u32, (seed >> 32) as u32],
    );
    (out[0] >> 8) as f32 * (1.0 / 16_777_216.0)
}

/// Whether dropout with probability `p` keeps element `index` of stream `seed`.
pub fn dropout_keep(seed: u64, index: u64, p: f32) -> bool {
    philox_uniform(seed, index) >= p
}

/// Marks the attention-dropout stream: XORed into the top counter word, which
/// the elementwise stream ([`philox_uniform`]) leaves at zero, so the two
/// streams never share a counter under one seed.
pub const ATTN_DROPOUT_TAG: u32 = 0x4154_544e; // "ATTN"

/// The Philox words of attention dropout for head `head` (the op's offset
/// plus `batch * heads + h`), query row `i` and the key pair `2 * (j / 2)`,
/// `2 * (j / 2) + 1`. One call covers the four elements `(i, j)`,
/// `(i, j + 1)`, `(i + 8, j)`, `(i + 8, j + 1)` for `i % 16 < 8` and even
/// `j`: exactly what one lane holds of a 16 x 8 tensor-core tile of scores
/// (rows g and g + 8, columns 2t and 2t + 1), so a kernel spends one call
/// per four elements. Element `(i, j)` takes word [`attention_dropout_word`].
pub fn attention_dropout_words(seed: u64, head: u64, i: u32, j: u32) -> [u32; 4] {
    philox4x32(
        [
            j >> 1,
            ((i >> 4) << 3) | (i & 7),
            head as u32,
            (head >> 32) as u32 ^ ATTN_DROPOUT_TAG,
        ],
        [seed as u32, (seed >> 32) as u32],
    )
}

/// Which of [`attention_dropout_words`] element `(i, j)` uses.
pub fn attention_dropout_word(i: u32, j: u32) -> usize {
    (((i >> 3) & 1) * 2 + (j & 1)) as usize
}

/// Whether a Philox word keeps its element under dropout probability `p`:
/// its top 24 bits as a uniform in [0, 1) are at least `p`, as in
/// [`dropout_keep`]. (In integers: `word >> 8 >= ceil(p * 2^24)`, exactly.)
pub fn keeps(word: u32, p: f32) -> bool {
    (word >> 8) as f32 * (1.0 / 16_777_216.0) >= p
}

/// Whether attention dropout with probability `p` keeps the probability of
/// query `i` for key `j` in head `head` (see [`attention_dropout_words`]).
pub fn attention_dropout_keep(seed: u64, head: u64, i: u32, j: u32, p: f32) -> bool {
    keeps(
        attention_dropout_words(seed, head, i, j)[attention_dropout_word(i, j)],
        p,
    )
}

/// SplitMix64: tiny, fast, statistically fine for our host-side uses, and its
/// state is a single `u64`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HostRng {
    pub state: u64,
}

impl HostRng {
    pub fn new(seed: u64) -> Self {
        HostRng { state: seed }
    }

    /// An independent stream derived from this seed and a label.
    pub fn derive(seed: u64, stream: u64) -> Self {
        let mut r = HostRng::new(seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        r.next_u64();
        r
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform integer in [0, n). `n` must be > 0.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "HostRng::below(0)");
        // Lemire's multiply-shift; the tiny bias is irrelevant here.
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Standard normal (Box-Muller, one value per call).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform(); // (0, 1]
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn philox_matches_the_random123_known_answer() {
        // Known-answer vectors of Random123's kat_vectors for philox4x32_10.
        assert_eq!(
            philox4x32([0, 0, 0, 0], [0, 0]),
            [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]
        );
        assert_eq!(
            philox4x32([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd]
        );
        assert_eq!(
            philox4x32(
                [0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344],
                [0xa409_3822, 0x299f_31d0]
            ),
            [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1]
        );
    }

    #[test]
    fn dropout_keeps_about_one_minus_p() {
        let kept = (0..100_000u64).filter(|&i| dropout_keep(7, i, 0.2)).count();
        assert!((kept as f64 / 100_000.0 - 0.8).abs() < 0.01, "kept {kept}");
    }

    #[test]
    fn attention_dropout_keeps_about_one_minus_p_with_one_call_per_four_elements() {
        let (mut kept, mut n) = (0, 0);
        for head in [0u64, 5, 1 << 33] {
            for i in 0..40u32 {
                for j in 0..=i {
                    let k = attention_dropout_keep(7, head, i, j, 0.3);
                    kept += usize::from(k);
                    n += 1;
                }
            }
        }
        assert!(
            (kept as f64 / n as f64 - 0.7).abs() < 0.03,
            "kept {kept} of {n}"
        );
        // The four elements of one call use its four words.
        let w = attention_dropout_words(3, 2, 17, 6);
        for (i, j, k) in [(17, 6, 0), (17, 7, 1), (25, 6, 2), (25, 7, 3)] {
            assert_eq!(attention_dropout_words(3, 2, i, j), w);
            assert_eq!(attention_dropout_word(i, j), k);
        }
        assert_ne!(attention_dropout_words(3, 2, 33, 6), w);
        assert_ne!(attention_dropout_words(3, 2, 17, 8), w);
    }

    #[test]
    fn host_rng_is_deterministic_and_roughly_normal() {
        let mut a = HostRng::new(42);
        let mut b = HostRng::new(42);
        let xs: Vec<f64> = (0..20_000).map(|_| a.normal()).collect();
        let ys: Vec<f64> = (0..20_000).map(|_| b.normal()).collect();
        assert_eq!(xs, ys);
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        assert!(
            mean.abs() < 0.03 && (var - 1.0).abs() < 0.05,
            "{mean} {var}"
        );
    }
}
