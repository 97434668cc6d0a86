//! The one BPE merge loop behind every tokenizer in this crate.
//!
//! SentencePiece BPE (merge the adjacent pair whose concatenation is the vocabulary piece with
//! the highest score), tiktoken (merge the pair whose concatenated bytes have the lowest rank)
//! and GPT-2 merges (merge the pair with the lowest rank in the merges list) are the same
//! greedy algorithm: repeatedly merge the best adjacent pair, the leftmost one on a tie. They
//! differ only in how a pair is ranked, so that is the only thing callers pass in.
//!
//! The loop keeps candidate pairs in a binary heap and symbols in a linked list, so a word of
//! n symbols costs O(n log n) instead of the O(n²) of rescanning all pairs after every merge.
//! A heap entry goes stale when one of its symbols has since been merged; it is recognised on
//! pop because symbols only grow by absorbing their whole right neighbour, so a pair whose left
//! symbol is alive and whose combined length is unchanged is exactly the pair that was pushed.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

const NONE: u32 = u32::MAX;

/// A run of input bytes that currently forms one token.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Symbol {
    /// Byte offset of the symbol in the word.
    pub start: u32,
    /// Length in bytes; 0 once merged into its left neighbour.
    pub len: u32,
    /// Token id of the symbol, or `u32::MAX` when the symbol has none (unknown character).
    pub id: u32,
    /// A frozen symbol (a SentencePiece user-defined piece) is never merged.
    pub frozen: bool,
    prev: u32,
    next: u32,
}

impl Symbol {
    pub(crate) fn new(start: usize, len: usize, id: u32, frozen: bool) -> Symbol {
        Symbol {
            start: start as u32,
            len: len as u32,
            id,
            frozen,
            prev: NONE,
            next: NONE,
        }
    }

    /// The bytes of this symbol within `word`.
    pub(crate) fn bytes<'w>(&self, word: &'w [u8]) -> &'w [u8] {
        &word[self.start as usize..(self.start + self.len) as usize]
    }
}

/// Buffers reused across words so that encoding a long text does not allocate per word.
#[derive(Default)]
pub(crate) struct Scratch {
    pub symbols: Vec<Symbol>,
    heap: BinaryHeap<Reverse<(u64, u32, u32, u32)>>,
}

/// Merges `scratch.symbols` (one entry per initial symbol of `word`, in order) until no pair
/// ranks. `rank(word, left, right)` returns `(priority, merged_id)` for a mergeable pair, where
/// a lower priority merges first. Afterwards the live symbols are `scratch.live()`.
pub(crate) fn merge<F>(word: &[u8], scratch: &mut Scratch, rank: F)
where
    F: Fn(&[u8], &Symbol, &Symbol) -> Option<(u64, u32)>,
{
    let symbols = &mut scratch.symbols;
    let heap = &mut scratch.heap;
    heap.clear();
    let n = symbols.len();
    for (i, s) in symbols.iter_mut().enumerate() {
        s.prev = if i == 0 { NONE } else { i as u32 - 1 };
        s.next = if i + 1 == n { NONE } else { i as u32 + 1 };
    }
    let push = |heap: &mut BinaryHeap<_>, symbols: &[Symbol], left: u32| {
        let l = &symbols[left as usize];
        if l.next == NONE {
            return;
        }
        let r = &symbols[l.next as usize];
        if l.frozen || r.frozen {
            return;
        }
        if let Some((priority, id)) = rank(word, l, r) {
            heap.push(Reverse((priority, left, l.len + r.len, id)));
        }
    };
    for i in 0..n.saturating_sub(1) {
        push(heap, symbols, i as u32);
    }
    while let Some(Reverse((_, left, len, id))) = heap.pop() {
        let l = symbols[left as usize];
        if l.len == 0 || l.next == NONE {
            continue;
        }
        let right = l.next;
        let r = symbols[right as usize];
        if l.len + r.len != len {
            continue;
        }
        symbols[left as usize].len = len;
        symbols[left as usize].id = id;
        symbols[left as usize].next = r.next;
        if r.next != NONE {
            symbols[r.next as usize].prev = left;
        }
        symbols[right as usize].len = 0;
        if l.prev != NONE {
            push(heap, symbols, l.prev);
        }
        push(heap, symbols, left);
    }
}

impl Scratch {
    /// The symbols left after `merge`, in order.
    pub(crate) fn live(&self) -> impl Iterator<Item = &Symbol> {
        let mut at = if self.symbols.is_empty() { NONE } else { 0 };
        std::iter::from_fn(move || {
            if at == NONE {
                return None;
            }
            let s = &self.symbols[at as usize];
            at = s.next;
            Some(s)
        })
    }
}

/// Orders SentencePiece scores so that a higher score gets a lower (earlier) priority.
pub(crate) fn score_priority(score: f32) -> u64 {
    let bits = score.to_bits();
    let ascending = if bits & 0x8000_0000 != 0 {
        !bits
    } else {
        bits | 0x8000_0000
    };
    u64::from(!ascending)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A brute-force O(n²) greedy merger: the definition the heap loop must agree with.
    fn reference(word: &[u8], ranks: &[(&[u8], u64)]) -> Vec<Vec<u8>> {
        let mut parts: Vec<Vec<u8>> = word.iter().map(|&b| vec![b]).collect();
        loop {
            let mut best: Option<(u64, usize)> = None;
            for i in 0..parts.len().saturating_sub(1) {
                let joined = [parts[i].clone(), parts[i + 1].clone()].concat();
                if let Some(&(_, r)) = ranks.iter().find(|(p, _)| *p == joined.as_slice()) {
                    if best.is_none_or(|(br, _)| r < br) {
                        best = Some((r, i));
                    }
                }
            }
            let Some((_, i)) = best else { break };
            let right = parts.remove(i + 1);
            parts[i].extend(right);
        }
        parts
    }

    fn heap_merge(word: &[u8], ranks: &[(&[u8], u64)]) -> Vec<Vec<u8>> {
        let mut scratch = Scratch {
            symbols: (0..word.len())
                .map(|i| Symbol::new(i, 1, 0, false))
                .collect(),
            ..Scratch::default()
        };
        merge(word, &mut scratch, |w, l, r| {
            let joined = &w[l.start as usize..(r.start + r.len) as usize];
            ranks
                .iter()
                .find(|(p, _)| *p == joined)
                .map(|&(_, r)| (r, 0))
        });
        scratch.live().map(|s| s.bytes(word).to_vec()).collect()
    }

    #[test]
    fn heap_merge_matches_quadratic_reference() {
        let ranks: &[(&[u8], u64)] = &[
            (b"aa", 0),
            (b"ab", 1),
            (b"aaa", 2),
            (b"aaaa", 3),
            (b"ba", 1),
            (b"bab", 0),
            (b"abab", 4),
        ];
        let mut state = 12345u64;
        for len in 0..40 {
            for _ in 0..20 {
                let word: Vec<u8> = (0..len)
                    .map(|_| {
                        state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                        if (state >> 33).is_multiple_of(3) {
                            b'b'
                        } else {
                            b'a'
                        }
                    })
                    .collect();
                assert_eq!(
                    heap_merge(&word, ranks),
                    reference(&word, ranks),
                    "{word:?}"
                );
            }
        }
    }

    #[test]
    fn higher_score_gets_earlier_priority() {
        let scores = [-1e9f32, -3.5, -1.0, -0.0, 0.0, 0.5, 7.0, f32::MAX];
        for pair in scores.windows(2) {
            assert!(
                score_priority(pair[0]) >= score_priority(pair[1]),
                "{pair:?}"
            );
        }
        assert!(score_priority(-3.5) > score_priority(-1.0));
    }
}
