//! `certfleet scan PATH...`: the seed's FAQ automated. Finds every certificate in files and
//! directories (PEM blocks, and DER certificates embedded in any binary such as a firmware
//! image), describes each one, and flags what will break: certificates expired or expiring by a
//! deadline, trust bundles lacking a required root, intermediates and leaves pinned in bundles.
//!
//! Files are read in chunks with an overlap larger than any certificate the scanner looks for,
//! so memory stays bounded whatever the file size. A DER candidate is a SEQUENCE with a two-byte
//! length (`30 82 hi lo`) holding a TBSCertificate SEQUENCE; it counts only if the whole
//! certificate parses at exactly that length, so garbage never produces a certificate.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read, Write};
use std::path::PathBuf;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use certfleet_pki::{Certificate, CertificateId};
use serde_json::{Value, json};
use time::{Duration, OffsetDateTime};

use crate::bytes::{count_byte, find, find_byte};
use crate::describe::{Description, rfc3339, same_anchor};
use crate::values::{parse_date, parse_duration, read_pem_certificates};
use crate::{Error, Output};

/// Bytes read at a time.
const CHUNK: usize = 8 << 20;
/// Kept from one chunk to the next: more than the largest DER certificate with a two-byte
/// length (65,539 bytes) and than the PEM text of one (about 89 KiB).
const OVERLAP: usize = 128 << 10;
/// A PEM block whose END line is not within this many bytes of its BEGIN line is not looked at.
const MAX_PEM_BLOCK: usize = OVERLAP;

const EXIT_CODES: &str = "\
Exit codes:
  0  nothing flagged
  1  something flagged: a certificate expired or expiring by --before/--within, a pinned
     intermediate or leaf in a trust bundle, a trust bundle lacking a --require-roots root
  2  usage or input error (a PATH that does not exist, an unreadable --require-roots file)
Unreadable files, PEM blocks with bad base64 and truncated DER certificates are warnings: they
are reported and change no exit code.";

/// `certfleet scan`: find and check every certificate in files, directories and firmware images.
#[derive(clap::Args, Debug)]
#[command(after_help = EXIT_CODES)]
pub struct ScanArgs {
    /// Files and directories (scanned recursively) to look in.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Flag certificates that expire by this date (YYYY-MM-DD, midnight UTC, or RFC 3339).
    #[arg(long, value_name = "DATE", value_parser = parse_date, conflicts_with = "within")]
    pub before: Option<OffsetDateTime>,
    /// Flag certificates that expire within this duration from now (e.g. 30d, 12h, 2w).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub within: Option<Duration>,
    /// Roots (PEM) every trust bundle found must hold; each missing one is flagged per bundle.
    #[arg(long, value_name = "PATH")]
    pub require_roots: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub output: Output,
}

/// The exit status of `scan`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Nothing flagged.
    Clean,
    /// At least one finding flagged.
    Flagged,
    /// A usage or input error.
    InputError,
}

impl Status {
    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            Status::Clean => 0,
            Status::Flagged => 1,
            Status::InputError => 2,
        }
    }
}

/// How a certificate was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A "CERTIFICATE" PEM block.
    Pem,
    /// An OpenSSL "TRUSTED CERTIFICATE" PEM block (a certificate followed by trust settings).
    TrustedPem,
    /// DER bytes.
    Der,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Format::Pem => "pem",
            Format::TrustedPem => "trusted-pem",
            Format::Der => "der",
        }
    }

    fn is_pem(self) -> bool {
        matches!(self, Format::Pem | Format::TrustedPem)
    }
}

/// A certificate found in a file.
#[derive(Clone, Debug)]
pub struct Found {
    /// The byte offset of the DER, or of the PEM block's BEGIN line.
    pub offset: u64,
    /// The line (from 1) of the BEGIN line, for PEM.
    pub line: Option<u64>,
    /// How it was written.
    pub format: Format,
    /// The certificate.
    pub certificate: Certificate,
}

/// What one file holds.
#[derive(Debug, Default)]
pub struct FileScan {
    /// The certificates, by offset, each SHA-256 once (the first occurrence).
    pub certificates: Vec<Found>,
    /// The PEM certificates (every occurrence, before deduplication): what makes a trust bundle.
    pub pem_certificates: Vec<Certificate>,
    /// Things that looked like certificates but were not (bad base64, truncated DER).
    pub warnings: Vec<String>,
    /// Bytes read.
    pub bytes: u64,
}

/// Scans one stream. Memory is bounded by the chunk size, whatever the length of the stream.
pub fn scan_reader(reader: impl Read) -> io::Result<FileScan> {
    scan_reader_in_chunks(reader, CHUNK)
}

/// [`scan_reader`] with a chosen chunk size (tests use small ones to cross chunk boundaries).
pub fn scan_reader_in_chunks(mut reader: impl Read, chunk: usize) -> io::Result<FileScan> {
    let mut scan = FileScan::default();
    let mut state = Cursor::default();
    // Grown as needed by read_to_end (a small file never costs a whole chunk), then reused.
    let mut buffer: Vec<u8> = Vec::new();
    let mut found = Vec::new();
    let mut warnings = Vec::new();
    loop {
        let wanted = chunk + OVERLAP - buffer.len();
        let read = (&mut reader).take(wanted as u64).read_to_end(&mut buffer)?;
        let eof = read < wanted;
        let limit = if eof { buffer.len() } else { buffer.len() - OVERLAP };
        scan_der(&buffer, limit, eof, &mut state, &mut found, &mut warnings);
        scan_pem(&buffer, limit, &mut state, &mut found, &mut warnings);
        if eof {
            scan.bytes = state.base + buffer.len() as u64;
            break;
        }
        state.count_lines(&buffer, limit);
        buffer.drain(..limit);
        state.base += limit as u64;
        state.der_from = state.der_from.saturating_sub(limit);
        state.pem_from = state.pem_from.saturating_sub(limit);
    }
    found.sort_by_key(|found: &Found| found.offset);
    warnings.sort_by_key(|(offset, _): &(u64, String)| *offset);
    scan.warnings = warnings.into_iter().map(|(_, message)| message).collect();
    scan.pem_certificates = found.iter().filter(|f| f.format.is_pem()).map(|f| f.certificate.clone()).collect();
    let mut seen: HashSet<CertificateId> = HashSet::new();
    scan.certificates = found.into_iter().filter(|found| seen.insert(found.certificate.id().clone())).collect();
    Ok(scan)
}

/// Where the scan is in the stream.
#[derive(Default)]
struct Cursor {
    /// The stream offset of the buffer's first byte.
    base: u64,
    /// Where DER and PEM scanning resume in the buffer (past what they consumed).
    der_from: usize,
    pem_from: usize,
    /// Newlines counted before stream offset `lines_upto`.
    lines: u64,
    lines_upto: u64,
}

impl Cursor {
    /// Counts the newlines of the buffer up to `end` (exclusive) not yet counted.
    fn count_lines(&mut self, buffer: &[u8], end: usize) {
        let from = usize::try_from(self.lines_upto.saturating_sub(self.base)).unwrap_or(usize::MAX).min(end);
        self.lines += count_byte(&buffer[from..end], b'\n');
        self.lines_upto = self.lines_upto.max(self.base + end as u64);
    }

    /// The line number (from 1) of buffer position `at`.
    fn line_at(&mut self, buffer: &[u8], at: usize) -> u64 {
        self.count_lines(buffer, at);
        self.lines + 1
    }
}

/// Looks for DER certificates starting in `buffer[state.der_from..limit]`.
fn scan_der(
    buffer: &[u8],
    limit: usize,
    eof: bool,
    state: &mut Cursor,
    found: &mut Vec<Found>,
    warnings: &mut Vec<(u64, String)>,
) {
    let mut at = state.der_from;
    while at < limit {
        let Some(step) = find_byte(&buffer[at..limit], 0x30) else {
            at = limit;
            break;
        };
        at += step;
        match der_candidate(&buffer[at..]) {
            Candidate::Not => at += 1,
            Candidate::Truncated { declared, strong } => {
                if eof && strong {
                    warnings.push((state.base + at as u64, format!(
                        "offset {}: a DER certificate is truncated ({declared} bytes declared, {} left in the file)",
                        state.base + at as u64,
                        buffer.len() - at
                    )));
                }
                at += 1;
            }
            Candidate::Whole { length, strong } => match Certificate::from_der(buffer[at..at + length].to_vec()) {
                Ok(certificate) => {
                    found.push(Found { offset: state.base + at as u64, line: None, format: Format::Der, certificate });
                    at += length;
                }
                Err(error) => {
                    if strong {
                        let offset = state.base + at as u64;
                        warnings.push((
                            offset,
                            format!("offset {offset}: looks like a DER certificate but does not parse: {error}"),
                        ));
                    }
                    at += 1;
                }
            },
        }
    }
    state.der_from = at;
}

enum Candidate {
    /// Not a certificate's header.
    Not,
    /// A certificate header whose declared length runs past the data.
    Truncated { declared: usize, strong: bool },
    /// A certificate header and all its declared bytes.
    Whole { length: usize, strong: bool },
}

/// Whether `bytes` starts like a certificate: `30 82 hi lo` (at least 256 bytes), then a
/// TBSCertificate SEQUENCE that fits inside, starting with a version `[0]` or a serial INTEGER.
/// `strong` when it starts like a v3 certificate (`a0 03 02 01 02`): worth a warning if it then
/// fails.
fn der_candidate(bytes: &[u8]) -> Candidate {
    if bytes.len() < 8 || bytes[0] != 0x30 || bytes[1] != 0x82 {
        return Candidate::Not;
    }
    let content = usize::from(u16::from_be_bytes([bytes[2], bytes[3]]));
    if content < 256 || bytes[4] != 0x30 {
        return Candidate::Not;
    }
    let (tbs_header, tbs_content) = match bytes[5] {
        0x81 => (3, usize::from(bytes[6])),
        0x82 => (4, usize::from(u16::from_be_bytes([bytes[6], bytes[7]]))),
        _ => return Candidate::Not,
    };
    if tbs_header + tbs_content >= content || bytes.len() < 4 + tbs_header + 5 {
        return Candidate::Not;
    }
    let tbs = &bytes[4 + tbs_header..];
    if tbs[0] != 0xa0 && tbs[0] != 0x02 {
        return Candidate::Not;
    }
    let strong = tbs[..5] == [0xa0, 0x03, 0x02, 0x01, 0x02];
    let length = 4 + content;
    if bytes.len() < length {
        Candidate::Truncated { declared: length, strong }
    } else {
        Candidate::Whole { length, strong }
    }
}

/// Looks for PEM certificate blocks whose BEGIN line starts in `buffer[state.pem_from..limit]`.
fn scan_pem(
    buffer: &[u8],
    limit: usize,
    state: &mut Cursor,
    found: &mut Vec<Found>,
    warnings: &mut Vec<(u64, String)>,
) {
    const BEGIN: &[u8] = b"-----BEGIN ";
    let mut at = state.pem_from;
    while at < limit {
        let window_end = (limit + BEGIN.len()).min(buffer.len());
        let Some(step) = find(&buffer[at..window_end], BEGIN) else {
            at = limit;
            break;
        };
        at += step;
        let after_begin = &buffer[at + BEGIN.len()..];
        let (label, format) = if after_begin.starts_with(b"CERTIFICATE-----") {
            ("CERTIFICATE", Format::Pem)
        } else if after_begin.starts_with(b"TRUSTED CERTIFICATE-----") {
            ("TRUSTED CERTIFICATE", Format::TrustedPem)
        } else {
            at += 1;
            continue;
        };
        let line = state.line_at(buffer, at);
        let offset = state.base + at as u64;
        let body_start = at + BEGIN.len() + label.len() + 5;
        let end_line = format!("-----END {label}-----");
        let window = &buffer[body_start..(at + MAX_PEM_BLOCK).min(buffer.len())];
        let Some(body_length) = find(window, end_line.as_bytes()) else {
            warnings.push((offset, format!("line {line}: a {label} PEM block has no END line")));
            at = body_start;
            continue;
        };
        let body = &buffer[body_start..body_start + body_length];
        at = body_start + body_length + end_line.len();
        match decode_pem_body(body, format) {
            Ok(certificate) => found.push(Found { offset, line: Some(line), format, certificate }),
            Err(reason) => {
                warnings.push((offset, format!("line {line}: a {label} PEM block is not a certificate: {reason}")));
            }
        }
    }
    state.pem_from = at;
}

/// Decodes a PEM body: base64 with any whitespace, or the same written as C string literals
/// (`"MIIB...\n"` lines, as in firmware sources).
fn decode_pem_body(body: &[u8], format: Format) -> Result<Certificate, String> {
    let plain: Vec<u8> = body.iter().copied().filter(|byte| !byte.is_ascii_whitespace()).collect();
    let der = match STANDARD.decode(&plain) {
        Ok(der) => der,
        Err(error) => {
            let text = String::from_utf8_lossy(body).replace("\\n", "").replace("\\r", "").replace('"', "");
            let literal: Vec<u8> = text.bytes().filter(|byte| !byte.is_ascii_whitespace()).collect();
            if literal == plain {
                return Err(format!("bad base64: {error}"));
            }
            STANDARD.decode(&literal).map_err(|_| format!("bad base64: {error}"))?
        }
    };
    let der = match format {
        // A TRUSTED CERTIFICATE is the certificate's DER followed by OpenSSL's trust settings.
        Format::TrustedPem => {
            let length = match der_candidate(&der) {
                Candidate::Whole { length, .. } => length,
                _ => return Err("no certificate at the start of the block".to_owned()),
            };
            der[..length].to_vec()
        }
        Format::Pem | Format::Der => der,
    };
    Certificate::from_der(der).map_err(|error| error.to_string())
}

/// What to flag.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Flag certificates expiring by then (expired ones are always flagged).
    pub deadline: Option<OffsetDateTime>,
    /// Roots every trust bundle must hold.
    pub required_roots: Vec<Certificate>,
}

/// A reason a certificate is flagged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flag {
    /// It has expired.
    Expired,
    /// It expires by the deadline.
    ExpiresByDeadline,
    /// A CA certificate that is not a self-signed root, in a trust bundle.
    PinnedIntermediate,
    /// An end-entity certificate in a trust bundle.
    PinnedLeaf,
}

impl Flag {
    /// The stable name used in both outputs.
    pub fn name(self) -> &'static str {
        match self {
            Flag::Expired => "expired",
            Flag::ExpiresByDeadline => "expires-by-deadline",
            Flag::PinnedIntermediate => "pinned-intermediate",
            Flag::PinnedLeaf => "pinned-leaf",
        }
    }
}

/// A certificate in the report.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The file it is in.
    pub file: PathBuf,
    /// Where and how.
    pub found: Found,
    /// Its description at the scan's `now`.
    pub description: Description,
    /// Why it is flagged (empty: not flagged).
    pub flags: Vec<Flag>,
}

/// A file that looks like a trust bundle (PEM certificates, at least one a CA).
#[derive(Clone, Debug)]
pub struct Bundle {
    /// The file.
    pub file: PathBuf,
    /// Its PEM certificates.
    pub certificates: usize,
    /// How many of them are CA certificates.
    pub ca_certificates: usize,
    /// The required roots it lacks.
    pub missing_roots: Vec<Description>,
}

/// Everything `scan` found.
#[derive(Debug)]
pub struct Report {
    /// When the scan ran.
    pub now: OffsetDateTime,
    /// The deadline certificates were checked against.
    pub deadline: Option<OffsetDateTime>,
    /// Files read.
    pub files: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Every certificate, by file then offset.
    pub entries: Vec<Entry>,
    /// The trust bundles.
    pub bundles: Vec<Bundle>,
    /// (file, message): unreadable files, broken certificates.
    pub warnings: Vec<(PathBuf, String)>,
}

impl Report {
    /// Flagged certificates plus bundles missing a root.
    pub fn flagged(&self) -> usize {
        self.entries.iter().filter(|entry| !entry.flags.is_empty()).count()
            + self.bundles.iter().filter(|bundle| !bundle.missing_roots.is_empty()).count()
    }

    /// Clean or flagged.
    pub fn status(&self) -> Status {
        if self.flagged() == 0 { Status::Clean } else { Status::Flagged }
    }

    /// The JSON document `--output json` prints (see docs/tools.md).
    pub fn to_json(&self) -> Value {
        let certificates: Vec<Value> = self
            .entries
            .iter()
            .map(|entry| {
                let mut value = entry.description.to_json();
                value["file"] = json!(entry.file.display().to_string());
                value["format"] = json!(entry.found.format.name());
                value["offset"] = json!(entry.found.offset);
                value["line"] = json!(entry.found.line);
                value["flags"] = json!(entry.flags.iter().map(|flag| flag.name()).collect::<Vec<_>>());
                value
            })
            .collect();
        let bundles: Vec<Value> = self
            .bundles
            .iter()
            .map(|bundle| {
                json!({
                    "file": bundle.file.display().to_string(),
                    "certificates": bundle.certificates,
                    "caCertificates": bundle.ca_certificates,
                    "missingRoots": bundle.missing_roots.iter().map(|root| json!({"subject": root.subject, "sha256": root.sha256})).collect::<Vec<_>>(),
                })
            })
            .collect();
        let status = self.status();
        json!({
            "scannedAt": rfc3339(self.now),
            "deadline": self.deadline.map(rfc3339),
            "filesScanned": self.files,
            "bytesScanned": self.bytes,
            "certificates": certificates,
            "bundles": bundles,
            "warnings": self.warnings.iter().map(|(file, message)| json!({"file": file.display().to_string(), "message": message})).collect::<Vec<_>>(),
            "flagged": self.flagged(),
            "exitCode": status.code(),
        })
    }

    /// The text `--output text` prints.
    pub fn to_text(&self) -> String {
        let mut out = Vec::new();
        for entry in &self.entries {
            let place = match entry.found.line {
                Some(line) => format!("line {line}"),
                None => format!("offset {} (0x{:x})", entry.found.offset, entry.found.offset),
            };
            out.push(format!("{} {place} [{}]", entry.file.display(), entry.found.format.name()));
            out.extend(entry.description.text_lines().into_iter().map(|line| format!("    {line}")));
            if !entry.flags.is_empty() {
                let names: Vec<&str> = entry.flags.iter().map(|flag| flag.name()).collect();
                out.push(format!("    FLAGGED:    {}", names.join(", ")));
            }
        }
        for bundle in &self.bundles {
            out.push(format!(
                "trust bundle {}: {} certificates, {} CA",
                bundle.file.display(),
                bundle.certificates,
                bundle.ca_certificates
            ));
            for root in &bundle.missing_roots {
                out.push(format!("    FLAGGED: missing required root {} (sha256 {})", root.subject, root.sha256));
            }
        }
        for (file, message) in &self.warnings {
            out.push(format!("warning: {}: {message}", file.display()));
        }
        out.push(format!(
            "{} certificates in {} files ({} bytes){}; {} flagged",
            self.entries.len(),
            self.files,
            self.bytes,
            self.deadline.map(|deadline| format!(", deadline {}", rfc3339(deadline))).unwrap_or_default(),
            self.flagged()
        ));
        let mut text = out.join("\n");
        text.push('\n');
        text
    }
}

/// Collects the regular files under `paths`: directories recursively, symbolic links followed
/// but every directory and file visited once (no loops). A `paths` entry that does not exist
/// is an error; a problem below it is a warning.
pub fn collect_files(paths: &[PathBuf], warnings: &mut Vec<(PathBuf, String)>) -> Result<Vec<PathBuf>, Error> {
    for path in paths {
        fs::metadata(path).map_err(|source| Error::Path { path: path.clone(), source })?;
    }
    let mut visited = HashSet::new();
    let mut files = Vec::new();
    let mut pending: Vec<PathBuf> = paths.iter().rev().cloned().collect();
    while let Some(path) = pending.pop() {
        let metadata = match fs::metadata(&path) {
            Ok(metadata) => metadata,
            Err(error) => {
                warnings.push((path, format!("skipped: {error}")));
                continue;
            }
        };
        if !(metadata.is_dir() || metadata.is_file()) {
            continue; // FIFOs, sockets, devices: reading them could block or never end.
        }
        let canonical = fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
        if !visited.insert(canonical) {
            continue;
        }
        if metadata.is_file() {
            files.push(path);
            continue;
        }
        let entries = match fs::read_dir(&path) {
            Ok(entries) => entries,
            Err(error) => {
                warnings.push((path, format!("skipped: {error}")));
                continue;
            }
        };
        let mut children: Vec<PathBuf> = entries.filter_map(|entry| entry.ok().map(|entry| entry.path())).collect();
        children.sort();
        pending.extend(children.into_iter().rev());
    }
    Ok(files)
}

/// Scans `paths` and judges what it finds at `now`.
pub fn scan(paths: &[PathBuf], options: &Options, now: OffsetDateTime) -> Result<Report, Error> {
    let mut report = Report {
        now,
        deadline: options.deadline,
        files: 0,
        bytes: 0,
        entries: Vec::new(),
        bundles: Vec::new(),
        warnings: Vec::new(),
    };
    let files = collect_files(paths, &mut report.warnings)?;
    for file in files {
        let scanned = fs::File::open(&file).and_then(scan_reader);
        let scanned = match scanned {
            Ok(scanned) => scanned,
            Err(error) => {
                report.warnings.push((file, format!("skipped: {error}")));
                continue;
            }
        };
        report.files += 1;
        report.bytes += scanned.bytes;
        report.warnings.extend(scanned.warnings.into_iter().map(|message| (file.clone(), message)));
        let ca_certificates = scanned.pem_certificates.iter().filter(|certificate| certificate.is_ca()).count();
        let is_bundle = ca_certificates > 0;
        if is_bundle {
            let missing_roots = options
                .required_roots
                .iter()
                .filter(|root| !scanned.pem_certificates.iter().any(|held| same_anchor(held, root)))
                .map(|root| Description::of(root, now))
                .collect();
            report.bundles.push(Bundle {
                file: file.clone(),
                certificates: scanned.pem_certificates.len(),
                ca_certificates,
                missing_roots,
            });
        }
        for found in scanned.certificates {
            let description = Description::of(&found.certificate, now);
            let flags = flags(&description, is_bundle && found.format.is_pem(), options.deadline, now);
            report.entries.push(Entry { file: file.clone(), found, description, flags });
        }
    }
    Ok(report)
}

fn flags(
    description: &Description,
    in_bundle: bool,
    deadline: Option<OffsetDateTime>,
    now: OffsetDateTime,
) -> Vec<Flag> {
    let mut flags = Vec::new();
    if description.expired_at(now) {
        flags.push(Flag::Expired);
    } else if deadline.is_some_and(|deadline| description.not_after <= deadline) {
        flags.push(Flag::ExpiresByDeadline);
    }
    if in_bundle && description.is_ca && !description.self_signed {
        flags.push(Flag::PinnedIntermediate);
    }
    if in_bundle && !description.is_ca {
        flags.push(Flag::PinnedLeaf);
    }
    flags
}

/// The whole command: parse, scan, print; returns the exit status.
pub fn run(args: &ScanArgs, now: OffsetDateTime, stdout: &mut dyn Write, stderr: &mut dyn Write) -> Status {
    let required_roots = match &args.require_roots {
        Some(path) => match read_pem_certificates(path) {
            Ok(roots) => roots,
            Err(error) => {
                let _ = writeln!(stderr, "certfleet scan: {error}");
                return Status::InputError;
            }
        },
        None => Vec::new(),
    };
    let deadline = args.before.or_else(|| args.within.map(|within| now + within));
    let report = match scan(&args.paths, &Options { deadline, required_roots }, now) {
        Ok(report) => report,
        Err(error) => {
            let _ = writeln!(stderr, "certfleet scan: {error}");
            return Status::InputError;
        }
    };
    let printed = match args.output {
        Output::Json => writeln!(stdout, "{}", report.to_json()),
        Output::Text => write!(stdout, "{}", report.to_text()),
    };
    if printed.is_err() {
        return Status::InputError;
    }
    report.status()
}
