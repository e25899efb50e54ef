//! Encryption at rest for private keys and other secrets, under a passphrase.
//!
//! A sealed blob is
//!
//! ```text
//! b"CFSEAL1" | iterations: u32 big-endian | salt: 16 bytes | nonce: 12 bytes | AES-256-GCM ciphertext and tag
//! ```
//!
//! with the key derived by PBKDF2-HMAC-SHA256 from the passphrase and the salt. Salt and nonce
//! are fresh random values for every blob, so a key is never used twice with the same nonce.
//! The whole header is the AEAD's associated data: changing any byte of it, the iteration count
//! included, makes [`open`] fail.

use std::num::NonZeroU32;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::{pbkdf2, rand};
use zeroize::Zeroizing;

use crate::Error;

/// The PBKDF2 iteration count [`seal`] uses (OWASP's recommendation for PBKDF2-HMAC-SHA256).
pub const DEFAULT_ITERATIONS: u32 = 600_000;

/// The fewest iterations [`open`] accepts.
pub const MIN_ITERATIONS: u32 = 10_000;

/// The most iterations [`open`] accepts: more would let a forged header burn minutes of CPU.
pub const MAX_ITERATIONS: u32 = 10_000_000;

const MAGIC: &[u8; 7] = b"CFSEAL1";
const SALT_LEN: usize = 16;
const HEADER_LEN: usize = MAGIC.len() + 4 + SALT_LEN + NONCE_LEN;
const TAG_LEN: usize = 16;

/// Seals `plaintext` under `passphrase` with [`DEFAULT_ITERATIONS`].
pub fn seal(passphrase: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, Error> {
    seal_with_iterations(passphrase, plaintext, DEFAULT_ITERATIONS)
}

/// Seals with a chosen iteration count, within [`MIN_ITERATIONS`]..=[`MAX_ITERATIONS`]; tests
/// use it to stay fast, everything else uses [`seal`].
pub(crate) fn seal_with_iterations(passphrase: &[u8], plaintext: &[u8], iterations: u32) -> Result<Vec<u8>, Error> {
    let iterations = accepted_iterations(iterations)?;
    let mut salt = [0u8; SALT_LEN];
    let mut nonce = [0u8; NONCE_LEN];
    rand::fill(&mut salt).map_err(|_| Error::Random)?;
    rand::fill(&mut nonce).map_err(|_| Error::Random)?;
    let mut blob = Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN);
    blob.extend_from_slice(MAGIC);
    blob.extend_from_slice(&iterations.get().to_be_bytes());
    blob.extend_from_slice(&salt);
    blob.extend_from_slice(&nonce);
    let key = derive_key(passphrase, &salt, iterations)?;
    let mut sealed = plaintext.to_vec();
    key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(&blob[..]), &mut sealed)
        .map_err(|_| Error::SealFailed)?;
    blob.extend_from_slice(&sealed);
    Ok(blob)
}

/// Opens a blob made by [`seal`]; the iteration count comes from its header.
pub fn open(passphrase: &[u8], blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
    let bad = |reason: &str| Error::BadSealedBlob { reason: reason.to_owned() };
    if !blob.starts_with(MAGIC) {
        return Err(bad("it does not start with CFSEAL1"));
    }
    if blob.len() < HEADER_LEN + TAG_LEN {
        return Err(bad("truncated"));
    }
    let (header, sealed) = blob.split_at(HEADER_LEN);
    let (iterations, rest) = header[MAGIC.len()..].split_at(4);
    let (salt, nonce) = rest.split_at(SALT_LEN);
    let iterations = u32::from_be_bytes([iterations[0], iterations[1], iterations[2], iterations[3]]);
    let iterations = accepted_iterations(iterations)?;
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| bad("bad nonce"))?;
    let key = derive_key(passphrase, salt, iterations)?;
    let mut plaintext = Zeroizing::new(sealed.to_vec());
    let length = key.open_in_place(nonce, Aad::from(header), &mut plaintext).map_err(|_| Error::SealOpenFailed)?.len();
    plaintext.truncate(length);
    Ok(plaintext)
}

fn accepted_iterations(iterations: u32) -> Result<NonZeroU32, Error> {
    match NonZeroU32::new(iterations) {
        Some(count) if (MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) => Ok(count),
        _ => Err(Error::BadSealedBlob {
            reason: format!("iteration count {iterations} is outside {MIN_ITERATIONS}..={MAX_ITERATIONS}"),
        }),
    }
}

fn derive_key(passphrase: &[u8], salt: &[u8], iterations: NonZeroU32) -> Result<LessSafeKey, Error> {
    let mut key = Zeroizing::new([0u8; 32]);
    pbkdf2::derive(pbkdf2::PBKDF2_HMAC_SHA256, iterations, salt, passphrase, &mut key[..]);
    let key = UnboundKey::new(&AES_256_GCM, &key[..]).map_err(|_| Error::SealFailed)?;
    Ok(LessSafeKey::new(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSPHRASE: &[u8] = b"correct horse battery staple";
    const SECRET: &[u8] = b"-----BEGIN PRIVATE KEY-----\nnot really\n-----END PRIVATE KEY-----\n";

    fn sealed() -> Vec<u8> {
        seal_with_iterations(PASSPHRASE, SECRET, MIN_ITERATIONS).expect("seals")
    }

    fn check(passphrase: &[u8], blob: &[u8], expected: Result<&[u8], &str>) {
        let got = open(passphrase, blob);
        match (got, expected) {
            (Ok(plaintext), Ok(want)) => assert_eq!(&plaintext[..], want),
            (Err(error), Err(want)) => assert_eq!(error.to_string(), want),
            (got, want) => panic!("got {got:?}, want {want:?}"),
        }
    }

    fn with_iterations(iterations: u32) -> Vec<u8> {
        let mut blob = sealed();
        blob[7..11].copy_from_slice(&iterations.to_be_bytes());
        blob
    }

    #[test]
    fn round_trip() {
        check(PASSPHRASE, &sealed(), Ok(SECRET));
    }

    #[test]
    fn round_trip_empty_plaintext() {
        let blob = seal_with_iterations(PASSPHRASE, b"", MIN_ITERATIONS).expect("seals");
        check(PASSPHRASE, &blob, Ok(b""));
    }

    #[test]
    fn layout() {
        let blob = sealed();
        assert_eq!(
            (&blob[..7], &blob[7..11], blob.len()),
            (&b"CFSEAL1"[..], &MIN_ITERATIONS.to_be_bytes()[..], 39 + SECRET.len() + 16)
        );
    }

    #[test]
    fn salt_and_nonce_differ_between_blobs() {
        let (first, second) = (sealed(), sealed());
        assert_ne!(first[11..39], second[11..39]);
    }

    #[test]
    fn wrong_passphrase() {
        check(b"tr0ub4dor&3", &sealed(), Err("sealed data cannot be opened: wrong passphrase or tampered data"));
    }

    #[test]
    fn tampered_ciphertext() {
        let mut blob = sealed();
        blob[45] ^= 1;
        check(PASSPHRASE, &blob, Err("sealed data cannot be opened: wrong passphrase or tampered data"));
    }

    #[test]
    fn tampered_tag() {
        let mut blob = sealed();
        let last = blob.len() - 1;
        blob[last] ^= 0x80;
        check(PASSPHRASE, &blob, Err("sealed data cannot be opened: wrong passphrase or tampered data"));
    }

    #[test]
    fn tampered_salt() {
        let mut blob = sealed();
        blob[11] ^= 1;
        check(PASSPHRASE, &blob, Err("sealed data cannot be opened: wrong passphrase or tampered data"));
    }

    #[test]
    fn tampered_iteration_count_within_range() {
        check(
            PASSPHRASE,
            &with_iterations(MIN_ITERATIONS + 1),
            Err("sealed data cannot be opened: wrong passphrase or tampered data"),
        );
    }

    #[test]
    fn truncated_body() {
        check(PASSPHRASE, &sealed()[..39 + 15], Err("malformed sealed data: truncated"));
    }

    #[test]
    fn truncated_header() {
        check(PASSPHRASE, &sealed()[..20], Err("malformed sealed data: truncated"));
    }

    #[test]
    fn truncated_last_byte() {
        let blob = sealed();
        check(
            PASSPHRASE,
            &blob[..blob.len() - 1],
            Err("sealed data cannot be opened: wrong passphrase or tampered data"),
        );
    }

    #[test]
    fn empty_blob() {
        check(PASSPHRASE, b"", Err("malformed sealed data: it does not start with CFSEAL1"));
    }

    #[test]
    fn wrong_magic() {
        let mut blob = sealed();
        blob[6] = b'2';
        check(PASSPHRASE, &blob, Err("malformed sealed data: it does not start with CFSEAL1"));
    }

    #[test]
    fn too_few_iterations() {
        check(
            PASSPHRASE,
            &with_iterations(9_999),
            Err("malformed sealed data: iteration count 9999 is outside 10000..=10000000"),
        );
    }

    #[test]
    fn zero_iterations() {
        check(
            PASSPHRASE,
            &with_iterations(0),
            Err("malformed sealed data: iteration count 0 is outside 10000..=10000000"),
        );
    }

    #[test]
    fn too_many_iterations() {
        check(
            PASSPHRASE,
            &with_iterations(10_000_001),
            Err("malformed sealed data: iteration count 10000001 is outside 10000..=10000000"),
        );
    }
}
