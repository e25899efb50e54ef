//! Byte searching a word at a time, without a new dependency: scanning a firmware image is
//! dominated by looking for one byte value (0x30, '-', '\n').

const LOW_SEVEN: u64 = 0x7f7f_7f7f_7f7f_7f7f;
const HIGH: u64 = 0x8080_8080_8080_8080;
const ONES: u64 = 0x0101_0101_0101_0101;

/// A mask with the high bit set in exactly the bytes of `word` that equal `needle`.
fn equal_bytes(word: u64, needle: u8) -> u64 {
    let x = word ^ ONES.wrapping_mul(u64::from(needle));
    // A byte of x is zero exactly when the high bit of ((b & 0x7f) + 0x7f) | b is clear.
    !((((x & LOW_SEVEN) + LOW_SEVEN) | x) | LOW_SEVEN)
}

fn word(chunk: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(chunk);
    u64::from_le_bytes(bytes)
}

/// The position of the first `needle` in `haystack`.
pub(crate) fn find_byte(haystack: &[u8], needle: u8) -> Option<usize> {
    let mut chunks = haystack.chunks_exact(8);
    let mut offset = 0;
    for chunk in &mut chunks {
        let mask = equal_bytes(word(chunk), needle) & HIGH;
        if mask != 0 {
            return Some(offset + (mask.trailing_zeros() / 8) as usize);
        }
        offset += 8;
    }
    chunks.remainder().iter().position(|&byte| byte == needle).map(|position| offset + position)
}

/// How many times `needle` occurs in `haystack`.
pub(crate) fn count_byte(haystack: &[u8], needle: u8) -> u64 {
    let mut chunks = haystack.chunks_exact(8);
    let mut count = 0u64;
    for chunk in &mut chunks {
        count += u64::from((equal_bytes(word(chunk), needle) & HIGH).count_ones());
    }
    count + chunks.remainder().iter().filter(|&&byte| byte == needle).count() as u64
}

/// The position of the first occurrence of `needle` (not empty) in `haystack`.
pub(crate) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, rest) = needle.split_first()?;
    let mut start = 0;
    while start + needle.len() <= haystack.len() {
        let at = start + find_byte(&haystack[start..haystack.len() - rest.len()], first)?;
        if haystack[at + 1..].starts_with(rest) {
            return Some(at);
        }
        start = at + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_and_count_agree_with_the_obvious() {
        let haystack: Vec<u8> = (0..2000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        for needle in [0u8, 0x30, 0x7f, 0x80, 0xff, b'\n'] {
            for start in [0, 1, 7, 8, 9, 1000, 1999, 2000] {
                let slice = &haystack[start..];
                assert_eq!(find_byte(slice, needle), slice.iter().position(|&b| b == needle), "{needle} {start}");
                assert_eq!(count_byte(slice, needle), slice.iter().filter(|&&b| b == needle).count() as u64);
            }
        }
    }

    #[test]
    fn substrings() {
        let check = |haystack: &[u8], needle: &[u8], expected: Option<usize>| {
            assert_eq!(find(haystack, needle), expected, "{haystack:?} {needle:?}");
        };
        check(b"xx-----BEGIN CERT", b"-----BEGIN ", Some(2));
        check(b"----BEGIN -----BEGIN ", b"-----BEGIN ", Some(10));
        check(b"-----BEGIN", b"-----BEGIN ", None);
        check(b"", b"-", None);
        check(b"abc", b"", None);
        check(b"abcabc", b"c", Some(2));
    }
}
