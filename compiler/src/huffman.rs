//! Canonical Huffman coding of bytes, with runs of zero bytes as their own symbols (Deep
//! Compression's third stage: pruned and quantized weights are mostly zeros and a few values).
//!
//! Symbols 1–255 are byte values; symbol `255 + L` (L = 1..=64) is a run of L zero bytes, so that
//! the gap before each nonzero weight is one symbol (longer runs are split into 64s). Code
//! lengths are at most [`MAX_LEN`] bits (frequencies are halved until they fit). The payload is
//! `u8 table form | lengths | u64 symbol count | bits, MSB first`, the lengths either as a list
//! (form 0: `u16 count | (u16 symbol, u8 length)…`, for few symbols) or as one nibble per symbol
//! (form 1); codes are canonical (ordered by length, then symbol), so the lengths are all a decoder
//! needs.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// The longest code.
pub const MAX_LEN: u8 = 15;
const RUNS: usize = 64;
const SYMBOLS: usize = 256 + RUNS;

/// Why a payload cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn symbols(data: &[u8]) -> Vec<u16> {
    let mut out = Vec::with_capacity(data.len() / 2);
    let mut i = 0;
    while i < data.len() {
        if data[i] != 0 {
            out.push(data[i] as u16);
            i += 1;
            continue;
        }
        let mut run = data[i..].iter().take_while(|&&b| b == 0).count();
        i += run;
        while run > 0 {
            let take = run.min(RUNS);
            out.push((255 + take) as u16);
            run -= take;
        }
    }
    out
}

/// Code lengths for `freq` (0 for unused symbols), each ≤ [`MAX_LEN`].
fn code_lengths(freq: &[u64]) -> Vec<u8> {
    let mut f: Vec<u64> = freq.to_vec();
    loop {
        let used: Vec<usize> = (0..f.len()).filter(|&s| f[s] > 0).collect();
        let mut lens = vec![0u8; f.len()];
        if used.len() == 1 {
            lens[used[0]] = 1;
            return lens;
        }
        // Nodes: leaves 0..n, internal after; parent links give each leaf's depth.
        let mut parent: Vec<usize> = vec![usize::MAX; used.len()];
        let mut heap: BinaryHeap<Reverse<(u64, usize)>> = used.iter().enumerate().map(|(i, &s)| Reverse((f[s], i))).collect();
        while heap.len() > 1 {
            let Reverse((a, x)) = heap.pop().expect("two nodes");
            let Reverse((b, y)) = heap.pop().expect("two nodes");
            let id = parent.len();
            parent.push(usize::MAX);
            parent[x] = id;
            parent[y] = id;
            heap.push(Reverse((a + b, id)));
        }
        let mut too_long = false;
        for (i, &s) in used.iter().enumerate() {
            let (mut d, mut n) = (0u32, i);
            while parent[n] != usize::MAX {
                n = parent[n];
                d += 1;
            }
            too_long |= d > MAX_LEN as u32;
            lens[s] = d.min(255) as u8;
        }
        if !too_long {
            return lens;
        }
        for v in f.iter_mut().filter(|v| **v > 0) {
            *v = (*v).div_ceil(2);
        }
    }
}

/// Canonical codes for `lens`: (code, length) per symbol.
fn canonical(lens: &[u8]) -> Vec<(u32, u8)> {
    let mut order: Vec<usize> = (0..lens.len()).filter(|&s| lens[s] > 0).collect();
    order.sort_by_key(|&s| (lens[s], s));
    let mut codes = vec![(0u32, 0u8); lens.len()];
    let (mut code, mut prev) = (0u32, 0u8);
    for (i, &s) in order.iter().enumerate() {
        if i > 0 {
            code = (code + 1) << (lens[s] - prev);
        } else {
            code <<= lens[s];
        }
        prev = lens[s];
        codes[s] = (code, lens[s]);
    }
    codes
}

/// Encodes `data`.
pub fn encode(data: &[u8]) -> Vec<u8> {
    let syms = symbols(data);
    let mut freq = vec![0u64; SYMBOLS];
    for &s in &syms {
        freq[s as usize] += 1;
    }
    let mut out = Vec::new();
    if syms.is_empty() {
        out.push(0);
        out.extend(0u16.to_le_bytes());
        out.extend(0u64.to_le_bytes());
        return out;
    }
    let lens = code_lengths(&freq);
    let codes = canonical(&lens);
    let used: Vec<usize> = (0..SYMBOLS).filter(|&s| lens[s] > 0).collect();
    if 3 * used.len() + 2 <= SYMBOLS / 2 {
        out.push(0);
        out.extend((used.len() as u16).to_le_bytes());
        for &s in &used {
            out.extend((s as u16).to_le_bytes());
            out.push(lens[s]);
        }
    } else {
        out.push(1);
        out.extend(lens.chunks(2).map(|p| p[0] | (p[1] << 4)));
    }
    out.extend((syms.len() as u64).to_le_bytes());
    let (mut acc, mut bits) = (0u64, 0u32);
    for &s in &syms {
        let (code, len) = codes[s as usize];
        acc = (acc << len) | code as u64;
        bits += len as u32;
        while bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    if bits > 0 {
        out.push((acc << (8 - bits)) as u8);
    }
    out
}

fn take<'a>(p: &mut &'a [u8], n: usize) -> Result<&'a [u8], DecodeError> {
    if p.len() < n {
        return Err(DecodeError("the coded data ends early".into()));
    }
    let (a, b) = p.split_at(n);
    *p = b;
    Ok(a)
}

/// Decodes a payload that must yield exactly `expected` bytes.
pub fn decode(mut p: &[u8], expected: usize) -> Result<Vec<u8>, DecodeError> {
    let bad = |m: &str| DecodeError(m.to_string());
    let mut lens = vec![0u8; SYMBOLS];
    match take(&mut p, 1)?[0] {
        0 => {
            let used = u16::from_le_bytes(take(&mut p, 2)?.try_into().expect("2 bytes")) as usize;
            if used > SYMBOLS {
                return Err(bad("more code lengths than symbols"));
            }
            for _ in 0..used {
                let e = take(&mut p, 3)?;
                let s = u16::from_le_bytes([e[0], e[1]]) as usize;
                if s >= SYMBOLS || e[2] == 0 || e[2] > MAX_LEN || lens[s] != 0 {
                    return Err(bad("a bad code length entry"));
                }
                lens[s] = e[2];
            }
        }
        1 => {
            for (i, &b) in take(&mut p, SYMBOLS / 2)?.iter().enumerate() {
                lens[2 * i] = b & 15;
                lens[2 * i + 1] = b >> 4;
            }
        }
        _ => return Err(bad("an unknown code table form")),
    }
    let used = lens.iter().filter(|&&l| l > 0).count();
    let count = u64::from_le_bytes(take(&mut p, 8)?.try_into().expect("8 bytes"));
    // Kraft: a complete or under-full code (a single symbol has one 1-bit code).
    let kraft: u64 = lens.iter().filter(|&&l| l > 0).map(|&l| 1u64 << (MAX_LEN - l)).sum();
    if kraft > 1u64 << MAX_LEN {
        return Err(bad("the code lengths do not form a prefix code"));
    }
    if count > 0 && used == 0 {
        return Err(bad("symbols but no code"));
    }
    // Every symbol takes at least one bit.
    if count > p.len() as u64 * 8 {
        return Err(bad("more symbols than bits"));
    }
    let mut order: Vec<usize> = (0..SYMBOLS).filter(|&s| lens[s] > 0).collect();
    order.sort_by_key(|&s| (lens[s], s));
    let mut first_code = [0u32; MAX_LEN as usize + 2];
    let mut first_index = [0usize; MAX_LEN as usize + 2];
    let mut per_len = [0u32; MAX_LEN as usize + 2];
    for &s in &order {
        per_len[lens[s] as usize] += 1;
    }
    let (mut code, mut index) = (0u32, 0usize);
    for len in 1..=MAX_LEN as usize {
        code <<= 1;
        first_code[len] = code;
        first_index[len] = index;
        code += per_len[len];
        index += per_len[len] as usize;
    }
    let mut out = Vec::with_capacity(expected.min(p.len().saturating_mul(64)));
    let mut bit = 0usize;
    let total_bits = p.len() * 8;
    for _ in 0..count {
        let (mut c, mut len) = (0u32, 0usize);
        let sym = loop {
            if bit >= total_bits {
                return Err(bad("the coded data ends early"));
            }
            c = (c << 1) | ((p[bit / 8] >> (7 - bit % 8)) & 1) as u32;
            bit += 1;
            len += 1;
            if len > MAX_LEN as usize {
                return Err(bad("an invalid code"));
            }
            if c.wrapping_sub(first_code[len]) < per_len[len] {
                break order[first_index[len] + (c - first_code[len]) as usize];
            }
        };
        let run = if sym < 256 { 1 } else { sym - 255 };
        if out.len() + run > expected {
            return Err(bad("the coded data holds more bytes than the tensor"));
        }
        if sym < 256 {
            out.push(sym as u8);
        } else {
            out.resize(out.len() + run, 0);
        }
    }
    if out.len() != expected {
        return Err(DecodeError(format!("the coded data holds {} bytes, the tensor {expected}", out.len())));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let cases: Vec<Vec<u8>> = vec![
            vec![],
            vec![0],
            vec![7],
            vec![0; 100_000],
            (0..5000u32).map(|i| (i * 7 % 13) as u8).collect(),
            (0..5000u32).map(|i| if i % 5 == 0 { (i % 251) as u8 } else { 0 }).collect(),
            (0..=255u8).cycle().take(70_000).collect(),
        ];
        for c in cases {
            let e = encode(&c);
            assert_eq!(decode(&e, c.len()).unwrap(), c);
        }
    }

    #[test]
    fn skewed_frequencies_stay_within_the_length_limit() {
        // Fibonacci-like frequencies make a deep tree.
        let mut data = Vec::new();
        let (mut a, mut b) = (1usize, 1usize);
        for s in 1..40u8 {
            data.extend(std::iter::repeat_n(s, a.min(1 << 20)));
            (a, b) = (b, a + b);
        }
        let e = encode(&data);
        assert_eq!(decode(&e, data.len()).unwrap(), data);
    }

    #[test]
    fn sparse_data_codes_small() {
        let data: Vec<u8> = (0..10_000u32).map(|i| if i % 10 == 0 { 3 } else { 0 }).collect();
        assert!(encode(&data).len() < 10_000 / 3, "{}", encode(&data).len());
    }
}
