//! A small seeded mutator in the style of libFuzzer's: byte flips, interesting values, inserts,
//! deletes, copies and splices between corpus inputs. No coverage feedback: it is the cheap,
//! deterministic driver for CI, not a substitute for a libFuzzer run.

/// Values that tend to sit on boundaries: lengths, signs, ASCII delimiters of the formats fuzzed.
const INTERESTING: [u8; 24] = [
    0x00, 0x01, 0x7f, 0x80, 0xff, 0xfe, 0x30, 0x02, 0x04, 0x05, 0x06, 0x0c, 0x13, 0x16, 0x17, 0x18, b'"', b'{', b'}',
    b'*', b'/', b'$', b'%', b'\\',
];

/// Generates mutated inputs from a corpus; the same seed and corpus always give the same inputs.
#[derive(Clone, Debug)]
pub struct Mutator {
    state: u64,
}

impl Mutator {
    /// A mutator whose sequence is fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        // xorshift must not start at zero.
        Mutator { state: seed | 1 }
    }

    fn next(&mut self) -> u64 {
        // xorshift64*
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, bound: usize) -> usize {
        if bound == 0 { 0 } else { (self.next() % bound as u64) as usize }
    }

    fn byte(&mut self) -> u8 {
        self.next().to_le_bytes()[3]
    }

    /// One input: a corpus entry with one to eight mutations applied.
    ///
    /// # Panics
    ///
    /// When `corpus` is empty.
    pub fn mutate(&mut self, corpus: &[Vec<u8>]) -> Vec<u8> {
        assert!(!corpus.is_empty(), "a mutator needs a corpus");
        let mut data = corpus[self.below(corpus.len())].clone();
        let rounds = 1 + self.below(8);
        for _ in 0..rounds {
            self.mutate_once(&mut data, corpus);
        }
        data
    }

    fn mutate_once(&mut self, data: &mut Vec<u8>, corpus: &[Vec<u8>]) {
        let len = data.len();
        match self.below(9) {
            // Flip one bit.
            0 if len > 0 => {
                let at = self.below(len);
                data[at] ^= 1 << self.below(8);
            }
            // Overwrite a byte with a random or an interesting value.
            1 if len > 0 => {
                let at = self.below(len);
                data[at] = self.byte();
            }
            2 if len > 0 => {
                let at = self.below(len);
                data[at] = INTERESTING[self.below(INTERESTING.len())];
            }
            // Insert a byte.
            3 => {
                let at = self.below(len + 1);
                let value = if self.below(2) == 0 { self.byte() } else { INTERESTING[self.below(INTERESTING.len())] };
                data.insert(at, value);
            }
            // Delete a range.
            4 if len > 0 => {
                let at = self.below(len);
                let end = (at + 1 + self.below(16)).min(len);
                data.drain(at..end);
            }
            // Duplicate a range of the input inside itself.
            5 if len > 0 => {
                let from = self.below(len);
                let end = (from + 1 + self.below(64)).min(len);
                let chunk = data[from..end].to_vec();
                let at = self.below(len + 1);
                data.splice(at..at, chunk);
            }
            // Splice in a range of another corpus input.
            6 => {
                let other = &corpus[self.below(corpus.len())];
                if !other.is_empty() {
                    let from = self.below(other.len());
                    let end = (from + 1 + self.below(64)).min(other.len());
                    let at = self.below(len + 1);
                    let cut = (at + self.below(16)).min(len);
                    data.splice(at..cut, other[from..end].iter().copied());
                }
            }
            // Truncate.
            7 if len > 0 => {
                data.truncate(self.below(len));
            }
            // Add to or subtract from a byte (lengths off by a little).
            _ if len > 0 => {
                let at = self.below(len);
                let delta = 1 + self.below(4) as u8;
                data[at] = if self.below(2) == 0 { data[at].wrapping_add(delta) } else { data[at].wrapping_sub(delta) };
            }
            _ => data.push(self.byte()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Mutator;

    fn run(seed: u64, corpus: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let mut mutator = Mutator::new(seed);
        (0..200).map(|_| mutator.mutate(corpus)).collect()
    }

    #[test]
    fn a_seed_always_gives_the_same_inputs_and_seeds_differ() {
        let corpus = vec![b"{\"a\":1}".to_vec(), Vec::new(), vec![0x30, 0x82, 0x01, 0x00]];
        assert_eq!(run(7, &corpus), run(7, &corpus));
        assert_ne!(run(7, &corpus), run(8, &corpus));
    }

    #[test]
    fn mutations_change_the_inputs_and_reach_every_length_class() {
        let corpus = vec![b"SELECT * FROM 'a/b'".to_vec()];
        let inputs = run(1, &corpus);
        let changed = inputs.iter().filter(|input| **input != corpus[0]).count();
        assert!(changed > 150, "{changed} of 200 inputs differ from the seed");
        assert!(inputs.iter().any(|input| input.len() < corpus[0].len()));
        assert!(inputs.iter().any(|input| input.len() > corpus[0].len()));
    }
}
