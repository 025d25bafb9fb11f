// dispy-peer: the XSalsa20 keystream, several blocks at a time (issue 14).
//
// Upstream uses the `salsa20` crate, whose only backend computes one 64-byte block at a time
// in scalar code: on the staging path it was 40 % of a node's CPU (about 2.4 s per GB). Here
// the 20 rounds run on several blocks at once, one vector register per state word holding
// that word of every block: 4 blocks with SSE2 (the x86-64 baseline), 8 with AVX2 or 16 with
// AVX-512 when the CPU has them (chosen at run time); other targets compute one block at a
// time. The output is bit for bit the `salsa20` crate's (checked against it in the tests below, at every offset and split).

// `x = x ^ rotl(..)` reads as the cipher's definition does.
#![allow(clippy::assign_op_pattern)]

/// Bytes of keystream per refill: sixteen 64-byte blocks.
const BUF: usize = 16 * 64;

/// "expand 32-byte k"
const SIGMA: [u32; 4] = [0x6170_7865, 0x3320_646e, 0x7962_2d32, 0x6b20_6574];

/// XSalsa20 with a 32-byte key and a 24-byte nonce, applied as a stream: successive calls
/// to [`XSalsa20::apply_keystream`] continue where the last one stopped.
pub(crate) struct XSalsa20 {
    /// Salsa20's input block with the derived key; words 8 and 9 count blocks.
    state: [u32; 16],
    /// Keystream not used yet: `block[used..]`.
    block: [u8; BUF],
    used: usize,
    /// The widest vectors this CPU has.
    simd: Simd,
}

/// Which vector instructions compute the blocks.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Simd {
    /// x86-64's baseline: 4 blocks at once (or, on other targets, one block at a time).
    Sse2,
    /// 8 blocks at once.
    Avx2,
    /// 16 blocks at once, with a rotate instruction.
    Avx512,
}

impl XSalsa20 {
    pub(crate) fn new(key: &[u8; 32], nonce: &[u8; 24]) -> Self {
        let mut n16 = [0u8; 16];
        n16.copy_from_slice(&nonce[..16]);
        let subkey = hsalsa20(key, &n16);
        // Words 8 and 9, the block counter, start at 0.
        let state = input(&subkey, [word(&nonce[16..], 0), word(&nonce[16..], 1), 0, 0]);
        Self { state, block: [0; BUF], used: BUF, simd: Simd::detect() }
    }

    /// XORs the next `data.len()` bytes of the keystream into `data`.
    pub(crate) fn apply_keystream(&mut self, mut data: &mut [u8]) {
        if self.used < BUF {
            let n = data.len().min(BUF - self.used);
            let (head, rest) = data.split_at_mut(n);
            xor(head, &self.block[self.used..self.used + n]);
            self.used += n;
            data = rest;
        }
        while !data.is_empty() {
            self.refill();
            let n = data.len().min(BUF);
            let (head, rest) = data.split_at_mut(n);
            xor(head, &self.block[..n]);
            self.used = n;
            data = rest;
        }
    }

    /// The next BUF bytes of keystream into `block`.
    fn refill(&mut self) {
        #[cfg(target_arch = "x86_64")]
        match self.simd {
            // SAFETY: the CPU has AVX-512F (checked at run time in `Simd::detect`).
            Simd::Avx512 => unsafe { simd::blocks_avx512(&mut self.state, &mut self.block) },
            Simd::Avx2 => {
                for part in self.block.chunks_exact_mut(8 * 64) {
                    // SAFETY: the CPU has AVX2 (checked at run time in `Simd::detect`).
                    unsafe { simd::blocks_avx2(&mut self.state, part) };
                }
            }
            Simd::Sse2 => {
                for part in self.block.chunks_exact_mut(4 * 64) {
                    // SAFETY: SSE2 is part of x86-64.
                    unsafe { simd::blocks_sse2(&mut self.state, part) };
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        for block in self.block.chunks_exact_mut(64) {
            one_block(&mut self.state, block);
        }
        self.used = 0;
    }
}

impl Simd {
    fn detect() -> Simd {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f") {
                return Simd::Avx512;
            }
            if std::is_x86_feature_detected!("avx2") {
                return Simd::Avx2;
            }
        }
        Simd::Sse2
    }

    /// This one and every narrower one the CPU has.
    #[cfg(test)]
    fn available() -> Vec<Simd> {
        let best = Simd::detect();
        [Simd::Sse2, Simd::Avx2, Simd::Avx512].into_iter().filter(|s| (*s as u8) <= (best as u8)).collect()
    }
}

fn word(bytes: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([bytes[4 * i], bytes[4 * i + 1], bytes[4 * i + 2], bytes[4 * i + 3]])
}

fn xor(data: &mut [u8], keystream: &[u8]) {
    for (d, k) in data.iter_mut().zip(keystream) {
        *d ^= k;
    }
}

/// Salsa20's quarter round; `$add`, `$xrl` (x ^ rotl(s, r)) work on whatever a word is.
macro_rules! quarter {
    ($add:ident, $xrl:ident; $a:ident, $b:ident, $c:ident, $d:ident) => {
        $b = $xrl!($b, $add($a, $d), 7);
        $c = $xrl!($c, $add($b, $a), 9);
        $d = $xrl!($d, $add($c, $b), 13);
        $a = $xrl!($a, $add($d, $c), 18);
    };
}

/// Ten double rounds (a column round, then a row round) on sixteen words.
macro_rules! rounds {
    ($add:ident, $xrl:ident; $x:expr) => {{
        let [mut x0, mut x1, mut x2, mut x3, mut x4, mut x5, mut x6, mut x7, mut x8, mut x9, mut x10, mut x11, mut x12, mut x13, mut x14, mut x15] =
            $x;
        for _ in 0..10 {
            quarter!($add, $xrl; x0, x4, x8, x12);
            quarter!($add, $xrl; x5, x9, x13, x1);
            quarter!($add, $xrl; x10, x14, x2, x6);
            quarter!($add, $xrl; x15, x3, x7, x11);
            quarter!($add, $xrl; x0, x1, x2, x3);
            quarter!($add, $xrl; x5, x6, x7, x4);
            quarter!($add, $xrl; x10, x11, x8, x9);
            quarter!($add, $xrl; x15, x12, x13, x14);
        }
        [x0, x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12, x13, x14, x15]
    }};
}

fn add1(a: u32, b: u32) -> u32 {
    a.wrapping_add(b)
}

macro_rules! xrl1 {
    ($x:expr, $s:expr, $r:literal) => {
        $x ^ $s.rotate_left($r)
    };
}

fn rounds1(x: [u32; 16]) -> [u32; 16] {
    rounds!(add1, xrl1; x)
}

/// The counter of the next block (words 8 and 9).
fn counter(state: &[u32; 16]) -> u64 {
    u64::from(state[8]) | (u64::from(state[9]) << 32)
}

fn set_counter(state: &mut [u32; 16], c: u64) {
    // 2^64 blocks (a zebibyte) per connection: the counter cannot wrap in practice.
    state[8] = c as u32;
    state[9] = (c >> 32) as u32;
}

/// One Salsa20 block of `state` into `out` (64 bytes); advances the counter.
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
fn one_block(state: &mut [u32; 16], out: &mut [u8]) {
    let x = rounds1(*state);
    for (i, bytes) in out.chunks_exact_mut(4).enumerate() {
        bytes.copy_from_slice(&x[i].wrapping_add(state[i]).to_le_bytes());
    }
    let next = counter(state).wrapping_add(1);
    set_counter(state, next);
}

/// Several blocks at once: word i of every block in one vector register.
#[cfg(target_arch = "x86_64")]
mod simd {
    use super::{counter, set_counter};
    use std::arch::x86_64::*;

    /// `$name(state, out)`: LANES consecutive blocks of `state` into `out` (64·LANES bytes),
    /// advancing the counter, with the given vector type and intrinsics.
    macro_rules! blocks {
        ($name:ident, $feature:literal, $v:ty, $lanes:literal, $add:ident, $xor:ident, $or:ident, $sll:ident, $srl:ident, $set1:ident, $load:ident, $store:ident) => {
            #[target_feature(enable = $feature)]
            pub(super) unsafe fn $name(state: &mut [u32; 16], out: &mut [u8]) {
                #[inline(always)]
                fn add(a: $v, b: $v) -> $v {
                    // SAFETY: only reached from the function that enables the feature.
                    unsafe { $add(a, b) }
                }
                macro_rules! xrl {
                    ($x:expr, $s:expr, $r:literal) => {{
                        let s = $s;
                        $xor($x, $or($sll::<$r>(s), $srl::<{ 32 - $r }>(s)))
                    }};
                }
                let first = counter(state);
                let mut lo = [0u32; $lanes];
                let mut hi = [0u32; $lanes];
                for l in 0..$lanes {
                    let c = first.wrapping_add(l as u64);
                    lo[l] = c as u32;
                    hi[l] = (c >> 32) as u32;
                }
                // SAFETY: the feature is enabled; loads and stores are unaligned ones of
                // arrays exactly one vector long.
                let input: [$v; 16] = std::array::from_fn(|i| unsafe {
                    match i {
                        8 => $load(lo.as_ptr().cast()),
                        9 => $load(hi.as_ptr().cast()),
                        _ => $set1(state[i] as i32),
                    }
                });
                let x = rounds!(add, xrl; input);
                let mut words = [[0u32; $lanes]; 16];
                for i in 0..16 {
                    // SAFETY: as above.
                    unsafe { $store(words[i].as_mut_ptr().cast(), add(x[i], input[i])) };
                }
                for (l, block) in out.chunks_exact_mut(64).take($lanes).enumerate() {
                    for (i, bytes) in block.chunks_exact_mut(4).enumerate() {
                        bytes.copy_from_slice(&words[i][l].to_le_bytes());
                    }
                }
                set_counter(state, first.wrapping_add($lanes));
            }
        };
    }

    blocks!(
        blocks_sse2,
        "sse2",
        __m128i,
        4,
        _mm_add_epi32,
        _mm_xor_si128,
        _mm_or_si128,
        _mm_slli_epi32,
        _mm_srli_epi32,
        _mm_set1_epi32,
        _mm_loadu_si128,
        _mm_storeu_si128
    );
    blocks!(
        blocks_avx2,
        "avx2",
        __m256i,
        8,
        _mm256_add_epi32,
        _mm256_xor_si256,
        _mm256_or_si256,
        _mm256_slli_epi32,
        _mm256_srli_epi32,
        _mm256_set1_epi32,
        _mm256_loadu_si256,
        _mm256_storeu_si256
    );
    // The shift-or pattern compiles to AVX-512's rotate (vprold).
    blocks!(
        blocks_avx512,
        "avx512f",
        __m512i,
        16,
        _mm512_add_epi32,
        _mm512_xor_si512,
        _mm512_or_si512,
        _mm512_slli_epi32,
        _mm512_srli_epi32,
        _mm512_set1_epi32,
        _mm512_loadu_si512,
        _mm512_storeu_si512
    );
}

/// Salsa20's input block: the constant, the key, and `middle` as words 6 to 9 (a nonce and
/// a block counter, or HSalsa20's 16-byte nonce).
fn input(key: &[u8; 32], middle: [u32; 4]) -> [u32; 16] {
    let mut x = [0u32; 16];
    x[0] = SIGMA[0];
    x[5] = SIGMA[1];
    x[10] = SIGMA[2];
    x[15] = SIGMA[3];
    for i in 0..4 {
        x[1 + i] = word(key, i);
        x[11 + i] = word(key, 4 + i);
        x[6 + i] = middle[i];
    }
    x
}

/// HSalsa20: the subkey for a key and the nonce's first 16 bytes.
fn hsalsa20(key: &[u8; 32], nonce: &[u8; 16]) -> [u8; 32] {
    let x = rounds1(input(key, std::array::from_fn(|i| word(nonce, i))));
    let mut out = [0u8; 32];
    for (chunk, i) in out.chunks_exact_mut(4).zip([0, 5, 10, 15, 6, 7, 8, 9]) {
        chunk.copy_from_slice(&x[i].to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use salsa20::cipher::{KeyIvInit, StreamCipher};

    fn reference(key: &[u8; 32], nonce: &[u8; 24], data: &mut [u8]) {
        salsa20::XSalsa20::new(&(*key).into(), &(*nonce).into()).apply_keystream(data);
    }

    #[test]
    fn matches_the_salsa20_crate_at_every_split() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for simd in Simd::available() {
            for _ in 0..20 {
                let key: [u8; 32] = std::array::from_fn(|_| next() as u8);
                let nonce: [u8; 24] = std::array::from_fn(|_| next() as u8);
                let plain: Vec<u8> = (0..5000).map(|_| next() as u8).collect();
                let mut want = plain.clone();
                reference(&key, &nonce, &mut want);
                let mut got = plain.clone();
                let mut ours = XSalsa20::new(&key, &nonce);
                ours.simd = simd;
                let mut at = 0;
                while at < got.len() {
                    let n = ((next() % 700) as usize).min(got.len() - at);
                    ours.apply_keystream(&mut got[at..at + n]);
                    at += n;
                }
                assert_eq!(got, want, "{simd:?}");
            }
        }
    }

    #[test]
    fn the_counter_carries_into_its_high_word() {
        let (key, nonce) = ([7u8; 32], [9u8; 24]);
        let mut ours = XSalsa20::new(&key, &nonce);
        ours.state[8] = u32::MAX - 2;
        let mut got = vec![0u8; 16 * 64];
        ours.apply_keystream(&mut got);
        let mut reference = salsa20::XSalsa20::new(&key.into(), &nonce.into());
        use salsa20::cipher::StreamCipherSeek;
        reference.seek((u64::from(u32::MAX) - 2) * 64);
        let mut want = vec![0u8; 16 * 64];
        reference.apply_keystream(&mut want);
        assert_eq!(got, want);
    }
}

#[cfg(test)]
mod speed {
    #[test]
    #[ignore]
    fn speed() {
        for simd in super::Simd::available() {
            let mut c = super::XSalsa20::new(&[1; 32], &[2; 24]);
            c.simd = simd;
            let mut buf = vec![1u8; 64 << 20];
            c.apply_keystream(&mut buf);
            let t = std::time::Instant::now();
            c.apply_keystream(&mut buf);
            eprintln!("{simd:?}: {:.0} MB/s", 64.0 * 1.048576 / t.elapsed().as_secs_f64());
        }
        use salsa20::cipher::{KeyIvInit, StreamCipher};
        let mut r = salsa20::XSalsa20::new(&[1; 32].into(), &[2; 24].into());
        let mut buf = vec![1u8; 64 << 20];
        r.apply_keystream(&mut buf);
        let t = std::time::Instant::now();
        r.apply_keystream(&mut buf);
        eprintln!("salsa20 crate: {:.0} MB/s", 64.0 * 1.048576 / t.elapsed().as_secs_f64());
    }
}
