//! The credentials directory: the certificates and keys, and `state.json`, which says which of
//! them is current and which, if any, is pending.
//!
//! ```text
//! <credentials_dir>/            0700
//!   state.json                  {"version":1,"current":"current","pending":null,"next_slot":1,...}
//!   current/cert.pem key.pem    the provisioned credentials (slot "current")
//!   slot-1/key.pem [cert.pem]   a rotation's new key, then its certificate
//! ```
//!
//! A *slot* is a directory holding one credential. `state.json` is the single commit point: it
//! is only ever replaced whole (written to a temporary file, fsynced, renamed over, directory
//! fsynced), and a slot is complete and fsynced on disk before `state.json` names it. So after a
//! crash at any instant, `state.json` is either the old or the new version, and every slot it
//! names is whole. Slots it does not name are leftovers of an interrupted step and are removed at
//! start. Without `state.json` (a freshly provisioned device) the current slot is `current`.
//! Files are 0600; keys are never logged.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use certfleet_pki::CertificateId;
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// The file that commits the state.
pub const STATE_FILE: &str = "state.json";
/// The slot of the provisioned credentials, current until the first rotation completes.
pub const BOOTSTRAP_SLOT: &str = "current";
/// The certificate file of a slot (PEM, the leaf first, then any intermediates).
pub const CERTIFICATE_FILE: &str = "cert.pem";
/// The private key file of a slot (PEM).
pub const KEY_FILE: &str = "key.pem";

/// The name of a slot directory: `current` or `slot-<n>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Slot(String);

impl Slot {
    /// The slot of the provisioned credentials.
    pub fn bootstrap() -> Self {
        Slot(BOOTSTRAP_SLOT.to_owned())
    }

    /// The `n`-th rotation slot.
    pub fn numbered(n: u64) -> Self {
        Slot(format!("slot-{n}"))
    }

    /// Parses a slot name as written in `state.json`.
    pub fn parse(name: &str) -> Option<Self> {
        let numbered =
            name.strip_prefix("slot-").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        (name == BOOTSTRAP_SLOT || numbered).then(|| Slot(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The rotation in progress, as committed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pending {
    /// A new key is in `slot` (its CSR may have been sent); no certificate yet.
    Key { slot: Slot },
    /// The slot holds the new key and a certificate that passed the checks; it is tried first at
    /// the next connection and promoted once `crt_ack` is delivered on a session that uses it.
    /// `proven` once a session with it was accepted (committed before `crt_ack` is sent): from
    /// then on the server may have retired the old certificate, so only an explicit refusal of
    /// the new one sends the device back to the old one.
    Certificate { slot: Slot, certificate_id: CertificateId, proven: bool },
}

impl Pending {
    pub fn slot(&self) -> &Slot {
        match self {
            Pending::Key { slot } | Pending::Certificate { slot, .. } => slot,
        }
    }
}

/// What `state.json` says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct State {
    /// The slot of the credentials known to work.
    pub current: Slot,
    /// The rotation in progress.
    pub pending: Option<Pending>,
    /// A failure not yet reported on `crt_err` (reported, then cleared, on the next session).
    pub unreported_error: Option<crate::rotation::Report>,
    /// The number of the next rotation slot.
    pub next_slot: u64,
}

impl State {
    /// The state of a freshly provisioned device.
    pub fn provisioned() -> Self {
        State { current: Slot::bootstrap(), pending: None, unreported_error: None, next_slot: 1 }
    }
}

/// The file format of `state.json` (kept apart from [`State`] so the format is explicit).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    version: u32,
    current: String,
    pending: Option<PendingFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    unreported_error: Option<String>,
    /// The code of `unreported_error` (absent in files of agents from before codes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    unreported_error_code: Option<String>,
    /// The certificate `unreported_error` is about, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    unreported_error_certificate: Option<String>,
    next_slot: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PendingFile {
    slot: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    certificate_id: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    proven: bool,
}

const STATE_VERSION: u32 = 1;

/// Encodes a state as `state.json` text.
pub fn encode_state(state: &State) -> String {
    let file = StateFile {
        version: STATE_VERSION,
        current: state.current.as_str().to_owned(),
        pending: state.pending.as_ref().map(|pending| match pending {
            Pending::Key { slot } => {
                PendingFile { slot: slot.as_str().to_owned(), certificate_id: None, proven: false }
            }
            Pending::Certificate { slot, certificate_id, proven } => PendingFile {
                slot: slot.as_str().to_owned(),
                certificate_id: Some(certificate_id.as_str().to_owned()),
                proven: *proven,
            },
        }),
        unreported_error: state.unreported_error.as_ref().map(|report| report.reason.clone()),
        unreported_error_code: state
            .unreported_error
            .as_ref()
            .and_then(|report| report.code)
            .map(|code| code.as_str().to_owned()),
        unreported_error_certificate: state
            .unreported_error
            .as_ref()
            .and_then(|report| report.certificate_id.as_ref())
            .map(|id| id.as_str().to_owned()),
        next_slot: state.next_slot,
    };
    let mut text = serde_json::to_string_pretty(&file).unwrap_or_default();
    text.push('\n');
    text
}

/// Decodes `state.json` text.
pub fn decode_state(text: &str) -> Result<State, Error> {
    let bad = |reason: String| Error::State { reason: format!("{STATE_FILE}: {reason}") };
    let file: StateFile = serde_json::from_str(text).map_err(|error| bad(error.to_string()))?;
    if file.version != STATE_VERSION {
        return Err(bad(format!("unknown version {}", file.version)));
    }
    let slot = |name: &str| Slot::parse(name).ok_or_else(|| bad(format!("bad slot name {name:?}")));
    let current = slot(&file.current)?;
    let pending = match file.pending {
        None => None,
        Some(pending) => {
            let pending_slot = slot(&pending.slot)?;
            if pending_slot == current {
                return Err(bad("the pending slot is the current slot".to_owned()));
            }
            Some(match pending.certificate_id {
                None if pending.proven => return Err(bad("a pending key cannot be proven".to_owned())),
                None => Pending::Key { slot: pending_slot },
                Some(id) => Pending::Certificate {
                    slot: pending_slot,
                    certificate_id: CertificateId::parse(&id).map_err(|error| bad(error.to_string()))?,
                    proven: pending.proven,
                },
            })
        }
    };
    let unreported_error = match (file.unreported_error, file.unreported_error_code, file.unreported_error_certificate)
    {
        (None, None, None) => None,
        (None, _, _) => return Err(bad("an error code or certificate without an error".to_owned())),
        (Some(reason), code, certificate) => Some(crate::rotation::Report {
            code: match code {
                None => None,
                Some(code) => Some(
                    crate::rotation::ErrorCode::parse(&code)
                        .ok_or_else(|| bad(format!("unknown error code {code:?}")))?,
                ),
            },
            reason,
            certificate_id: match certificate {
                None => None,
                Some(id) => Some(CertificateId::parse(&id).map_err(|error| bad(error.to_string()))?),
            },
        }),
    };
    Ok(State { current, pending, unreported_error, next_slot: file.next_slot })
}

/// The credentials directory.
#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { what, source }
}

impl Store {
    /// The store in `dir` (created 0700 when missing).
    pub fn open(dir: &Path) -> Result<Store, Error> {
        if !dir.exists() {
            fs::create_dir_all(dir).map_err(io("creating the credentials directory"))?;
            restrict(dir, 0o700).map_err(io("restricting the credentials directory"))?;
        }
        Ok(Store { dir: dir.to_owned() })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The directory of a slot.
    pub fn slot_dir(&self, slot: &Slot) -> PathBuf {
        self.dir.join(slot.as_str())
    }

    /// The committed state ([`State::provisioned`] when there is no `state.json`).
    pub fn load(&self) -> Result<State, Error> {
        match fs::read_to_string(self.dir.join(STATE_FILE)) {
            Ok(text) => decode_state(&text),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(State::provisioned()),
            Err(source) => Err(Error::Io { what: "reading state.json", source }),
        }
    }

    /// Commits `state`: after this returns, a crash leaves exactly this state on disk.
    pub fn commit(&self, state: &State) -> Result<(), Error> {
        write_atomically(&self.dir, STATE_FILE, encode_state(state).as_bytes()).map_err(io("writing state.json"))
    }

    /// Creates (or empties) a slot directory, durably.
    pub fn create_slot(&self, slot: &Slot) -> Result<(), Error> {
        let path = self.slot_dir(slot);
        if path.exists() {
            fs::remove_dir_all(&path).map_err(io("clearing a leftover slot"))?;
        }
        fs::create_dir(&path).map_err(io("creating a slot"))?;
        restrict(&path, 0o700).map_err(io("restricting a slot"))?;
        sync_dir(&self.dir).map_err(io("syncing the credentials directory"))
    }

    /// Writes a slot's private key (0600, atomically).
    pub fn write_key(&self, slot: &Slot, pem: &str) -> Result<(), Error> {
        write_atomically(&self.slot_dir(slot), KEY_FILE, pem.as_bytes()).map_err(io("writing a key"))
    }

    /// Writes a slot's certificate (0600, atomically).
    pub fn write_certificate(&self, slot: &Slot, pem: &str) -> Result<(), Error> {
        write_atomically(&self.slot_dir(slot), CERTIFICATE_FILE, pem.as_bytes()).map_err(io("writing a certificate"))
    }

    /// A slot's private key PEM.
    pub fn read_key(&self, slot: &Slot) -> Result<String, Error> {
        fs::read_to_string(self.slot_dir(slot).join(KEY_FILE)).map_err(io("reading a key"))
    }

    /// A slot's certificate PEM.
    pub fn read_certificate(&self, slot: &Slot) -> Result<String, Error> {
        fs::read_to_string(self.slot_dir(slot).join(CERTIFICATE_FILE)).map_err(io("reading a certificate"))
    }

    /// Removes a slot (best effort: a leftover is removed at the next start anyway).
    pub fn remove_slot(&self, slot: &Slot) {
        let _ = fs::remove_dir_all(self.slot_dir(slot));
        let _ = sync_dir(&self.dir);
    }

    /// Removes the slots and temporary files `state` does not name: leftovers of interrupted
    /// steps. Touches only names the agent itself makes.
    pub fn remove_leftovers(&self, state: &State) -> Result<Vec<String>, Error> {
        let mut removed = Vec::new();
        let entries = fs::read_dir(&self.dir).map_err(io("listing the credentials directory"))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let named =
                name == state.current.as_str() || state.pending.as_ref().is_some_and(|p| p.slot().as_str() == name);
            let ours = Slot::parse(&name).is_some();
            if ours && !named {
                fs::remove_dir_all(entry.path()).map_err(io("removing a leftover slot"))?;
                removed.push(name);
            } else if name.starts_with('.') && name.ends_with(".tmp") {
                fs::remove_file(entry.path()).map_err(io("removing a leftover temporary file"))?;
                removed.push(name);
            }
        }
        if !removed.is_empty() {
            sync_dir(&self.dir).map_err(io("syncing the credentials directory"))?;
        }
        Ok(removed)
    }
}

/// Writes `name` in `dir` so that a crash leaves either the old file or the new one, whole:
/// a temporary file (0600) written and fsynced, renamed over `name`, and the directory fsynced.
pub fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let temporary = dir.join(format!(".{name}.tmp"));
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&temporary)?;
    // A leftover temporary file may have been made with other permissions.
    restrict(&temporary, 0o600)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&temporary, dir.join(name))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

fn restrict(path: &Path, mode: u32) -> std::io::Result<()> {
    #[cfg(unix)]
    fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
    #[cfg(not(unix))]
    let _ = (path, mode);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> CertificateId {
        CertificateId::parse(&format!("{n:064x}")).unwrap()
    }

    fn round_trip(state: State) {
        assert_eq!(decode_state(&encode_state(&state)).unwrap(), state);
    }

    #[test]
    fn states_round_trip() {
        round_trip(State::provisioned());
        round_trip(State {
            pending: Some(Pending::Key { slot: Slot::numbered(1) }),
            next_slot: 2,
            ..State::provisioned()
        });
        round_trip(State {
            current: Slot::numbered(3),
            pending: Some(Pending::Certificate { slot: Slot::numbered(4), certificate_id: id(9), proven: true }),
            unreported_error: Some(crate::rotation::Report::new(
                crate::rotation::ErrorCode::Expired,
                "the certificate is expired",
                Some(id(8)),
            )),
            next_slot: 5,
        });
        round_trip(State {
            unreported_error: Some(crate::rotation::Report {
                code: None,
                reason: "written by an agent from before codes".into(),
                certificate_id: None,
            }),
            ..State::provisioned()
        });
    }

    fn check_refused(text: &str) {
        assert!(matches!(decode_state(text), Err(Error::State { .. })), "{text}");
    }

    #[test]
    fn nonsense_is_refused() {
        check_refused("");
        check_refused("{}");
        check_refused(r#"{"version":2,"current":"current","pending":null,"next_slot":1}"#);
        check_refused(r#"{"version":1,"current":"../etc","pending":null,"next_slot":1}"#);
        check_refused(r#"{"version":1,"current":"slot-","pending":null,"next_slot":1}"#);
        check_refused(r#"{"version":1,"current":"slot-1","pending":{"slot":"slot-1"},"next_slot":2}"#);
        check_refused(
            r#"{"version":1,"current":"current","pending":{"slot":"slot-1","certificate_id":"xyz"},"next_slot":2}"#,
        );
        check_refused(r#"{"version":1,"current":"current","pending":null,"next_slot":1,"extra":true}"#);
        check_refused(
            r#"{"version":1,"current":"current","pending":null,"unreported_error":"x","unreported_error_code":"nope","next_slot":1}"#,
        );
        check_refused(
            r#"{"version":1,"current":"current","pending":null,"unreported_error_code":"expired","next_slot":1}"#,
        );
        check_refused(r#"{"version":1,"current":"current","pending":{"slot":"slot-1","proven":true},"next_slot":2}"#);
    }

    #[test]
    fn files_are_private_and_leftovers_go() {
        let dir = std::env::temp_dir().join(format!("certfleet-agent-store-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let store = Store::open(&dir).unwrap();
        assert_eq!(store.load().unwrap(), State::provisioned());
        store.create_slot(&Slot::bootstrap()).unwrap();
        store.write_key(&Slot::bootstrap(), "not a real key").unwrap();
        store.create_slot(&Slot::numbered(1)).unwrap();
        store.create_slot(&Slot::numbered(2)).unwrap();
        fs::write(dir.join(".cert.pem.tmp"), "half").unwrap();
        fs::create_dir(dir.join("unrelated")).unwrap();
        let state =
            State { pending: Some(Pending::Key { slot: Slot::numbered(2) }), next_slot: 3, ..State::provisioned() };
        store.commit(&state).unwrap();
        assert_eq!(store.load().unwrap(), state);
        let mut removed = store.remove_leftovers(&state).unwrap();
        removed.sort();
        assert_eq!(removed, vec![".cert.pem.tmp".to_owned(), "slot-1".to_owned()]);
        assert!(dir.join("slot-2").exists() && dir.join("current").exists() && dir.join("unrelated").exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for file in [dir.join("state.json"), dir.join("current").join(KEY_FILE)] {
                assert_eq!(fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600, "{}", file.display());
            }
        }
        fs::remove_dir_all(&dir).unwrap();
    }
}
