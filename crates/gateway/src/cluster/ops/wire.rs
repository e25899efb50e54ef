//! What travels between the nodes for the cluster-wide operations, and how it is read: the
//! requests and their subjects, the framing of answers in parts, the assembly of one call's
//! answers within its bounds, each answer's body (JSON) encoded and decoded as hostile input,
//! and the sum of the nodes' endpoint reports. No network and no clock: the node's side
//! (`super`) sends and waits.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use bytes::Bytes;
use certfleet_pki::CertificateId;
use certfleet_registry::AccountId;
use certfleet_services::{ChainStats, ConnectedClient, DataPlane, DrainReport, EndpointReport, NodeView};

use super::OpsConfig;
use crate::fabric::NodeId;
use crate::model::Refusal;

/// Requests: `cf.ops.ask.<kind>.<account>`.
pub(super) const ASK: &str = "cf.ops.ask";
pub(super) const ALL_ASKS: &str = "cf.ops.ask.*.*";
/// A node committed a change-feed entry: read the feed now. The payload is its name.
pub(super) const CHANGED: &str = "cf.ops.changed";
/// A node is there. The payload is its name.
pub(super) const NODES: &str = "cf.ops.nodes";
/// The largest request a node reads.
const MAX_REQUEST: usize = 4096;
/// The longest string read from another node (client IDs are at most 128 bytes, SNI 255).
const MAX_TEXT: usize = 1024;
/// The most chains, and failure alerts per chain, read from one node's report.
const MAX_CHAINS: usize = 256;
const MAX_ALERTS: usize = 64;
/// The largest part of an answer (under NATS's payload limit, 1 MiB by default).
const MAX_PART: usize = 256 * 1024;
/// The version byte that starts every part.
const FRAME_VERSION: u8 = 1;

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Ask {
    Sessions,
    Refusals,
    Endpoint,
}

impl Ask {
    const ALL: [Ask; 3] = [Ask::Sessions, Ask::Refusals, Ask::Endpoint];

    pub(super) fn as_str(self) -> &'static str {
        match self {
            Ask::Sessions => "sessions",
            Ask::Refusals => "refusals",
            Ask::Endpoint => "endpoint",
        }
    }

    fn parse(text: &str) -> Option<Ask> {
        Ask::ALL.into_iter().find(|ask| ask.as_str() == text)
    }
}

/// The kind and account of a request's subject.
pub(super) fn parse_ask_subject(subject: &str) -> Option<(Ask, AccountId)> {
    let rest = subject.strip_prefix(ASK)?.strip_prefix('.')?;
    let (kind, account) = rest.split_once('.')?;
    Some((Ask::parse(kind)?, AccountId::parse(account).ok()?))
}

/// The request's body: who asks (a node does not answer itself) and, for an endpoint report,
/// the configuration's name.
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct RequestWire {
    pub(super) from: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) configuration: Option<String>,
}

pub(super) fn decode_request(payload: &[u8]) -> Option<RequestWire> {
    if payload.len() > MAX_REQUEST {
        return None;
    }
    let request: RequestWire = serde_json::from_slice(payload).ok()?;
    let configuration_fits = request.configuration.as_ref().is_none_or(|name| !name.is_empty() && name.len() <= 256);
    (request.from.len() <= NodeId::MAX_LEN && configuration_fits).then_some(request)
}

// ---- framing ------------------------------------------------------------------------------

/// One part of an answer: `[version][node length][node][part: u16][parts: u16][bytes]`.
pub(super) fn frame(node: &NodeId, part: u16, parts: u16, chunk: &[u8]) -> Bytes {
    let name = node.as_str().as_bytes();
    let mut out = Vec::with_capacity(6 + name.len() + chunk.len());
    out.push(FRAME_VERSION);
    out.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(name);
    out.extend_from_slice(&part.to_be_bytes());
    out.extend_from_slice(&parts.to_be_bytes());
    out.extend_from_slice(chunk);
    Bytes::from(out)
}

/// A part as read.
#[derive(Debug, PartialEq, Eq)]
struct Part<'a> {
    node: NodeId,
    part: u16,
    parts: u16,
    chunk: &'a [u8],
}

fn parse_frame(bytes: &[u8]) -> Option<Part<'_>> {
    let (&version, rest) = bytes.split_first()?;
    if version != FRAME_VERSION {
        return None;
    }
    let (&length, rest) = rest.split_first()?;
    let length = usize::from(length);
    let name = std::str::from_utf8(rest.get(..length)?).ok()?;
    let node = NodeId::parse(name).ok()?;
    let rest = &rest[length..];
    let part = u16::from_be_bytes([*rest.first()?, *rest.get(1)?]);
    let parts = u16::from_be_bytes([*rest.get(2)?, *rest.get(3)?]);
    let chunk = &rest[4..];
    (parts > 0 && part < parts && chunk.len() <= MAX_PART).then_some(Part { node, part, parts, chunk })
}

/// The largest part this node sends, under the server's payload limit.
pub(super) fn part_size(max_payload: usize) -> usize {
    max_payload.saturating_sub(1024).clamp(4096, MAX_PART)
}

/// Why a part was not taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Dropped {
    /// Not a part, a part out of order, or a part of an answer already complete or dropped.
    Malformed,
    /// The call has the answers of [`OpsConfig::max_nodes`] nodes already.
    TooManyNodes,
    /// The node's answer, or the call's answers, would pass their byte bound.
    OverBudget,
}

/// The answers of one call as they arrive: whole answers by node, and the one being assembled
/// per node, within the call's bounds.
pub(super) struct Answers {
    me: NodeId,
    max_nodes: usize,
    max_answer_bytes: usize,
    max_gathered_bytes: usize,
    assembling: HashMap<NodeId, (u16, Vec<u8>)>,
    pub(super) complete: Vec<(NodeId, Vec<u8>)>,
    /// Nodes whose answer was dropped: their later parts are ignored.
    dropped: HashSet<NodeId>,
    bytes: usize,
}

impl Answers {
    pub(super) fn new(me: NodeId, config: &OpsConfig) -> Self {
        Answers {
            me,
            max_nodes: config.max_nodes,
            max_answer_bytes: config.max_answer_bytes,
            max_gathered_bytes: config.max_gathered_bytes,
            assembling: HashMap::new(),
            complete: Vec::new(),
            dropped: HashSet::new(),
            bytes: 0,
        }
    }

    pub(super) fn answered(&self, node: &NodeId) -> bool {
        self.complete.iter().any(|(done, _)| done == node)
    }

    /// Takes one part; `Ok(true)` when it completed its node's answer.
    pub(super) fn take(&mut self, payload: &[u8]) -> Result<bool, Dropped> {
        let Some(Part { node, part, parts, chunk }) = parse_frame(payload) else { return Err(Dropped::Malformed) };
        if node == self.me || self.dropped.contains(&node) || self.answered(&node) {
            return Err(Dropped::Malformed);
        }
        let next = self.assembling.get(&node).map_or(0, |(next, _)| *next);
        if part != next {
            return Err(self.drop_node(node, Dropped::Malformed));
        }
        if next == 0 && self.complete.len() + self.assembling.len() >= self.max_nodes {
            self.dropped.insert(node);
            return Err(Dropped::TooManyNodes);
        }
        let held = self.assembling.get(&node).map_or(0, |(_, bytes)| bytes.len());
        if held + chunk.len() > self.max_answer_bytes || self.bytes + chunk.len() > self.max_gathered_bytes {
            return Err(self.drop_node(node, Dropped::OverBudget));
        }
        self.bytes += chunk.len();
        let entry = self.assembling.entry(node.clone()).or_default();
        entry.0 = part + 1;
        entry.1.extend_from_slice(chunk);
        if part + 1 < parts {
            return Ok(false);
        }
        if let Some((_, bytes)) = self.assembling.remove(&node) {
            self.complete.push((node, bytes));
        }
        Ok(true)
    }

    fn drop_node(&mut self, node: NodeId, why: Dropped) -> Dropped {
        if let Some((_, bytes)) = self.assembling.remove(&node) {
            self.bytes -= bytes.len();
        }
        self.dropped.insert(node);
        why
    }
}

// ---- what travels ---------------------------------------------------------------------------

/// A device as one node lists it.
#[derive(serde::Serialize, serde::Deserialize)]
struct ClientWire {
    client_id: Option<String>,
    certificate_id: String,
    sni: Option<String>,
    tls_version: String,
    peer: String,
    /// Unix time in milliseconds.
    connected_at_ms: i64,
    endpoint: Option<String>,
    chain: Option<String>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SessionsWire {
    truncated: bool,
    clients: Vec<ClientWire>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct RefusalsWire {
    refusals: Vec<(String, u64)>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ChainWire {
    chain: String,
    serving: bool,
    connected: u64,
    handshakes_completed: u64,
    handshakes_failed: BTreeMap<String, u64>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct DrainWire {
    migration_id: String,
    to_chain: String,
    sessions: usize,
    closed: usize,
    came_back: Vec<String>,
    not_back: Vec<String>,
    guard_tripped: Option<String>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct EndpointWire {
    truncated: bool,
    chains: Vec<ChainWire>,
    drain: Option<DrainWire>,
    /// The client IDs this node has connected through the configuration on its drain's target
    /// chain: a device drained on one node may come back on another.
    on_chain: Vec<String>,
}

/// One node's part of an endpoint report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct NodeReport {
    pub(super) node: String,
    pub(super) report: EndpointReport,
    pub(super) on_chain: Vec<String>,
}

fn text_fits(text: &str) -> bool {
    text.len() <= MAX_TEXT
}

fn optional_fits(text: &Option<String>) -> bool {
    text.as_deref().is_none_or(text_fits)
}

/// Encodes this node's devices: at most `max_entries`, and fewer if they would pass
/// `max_bytes` (the answer then says it is truncated).
pub(super) fn encode_sessions(clients: Vec<ConnectedClient>, max_entries: usize, max_bytes: usize) -> Vec<u8> {
    let total = clients.len();
    let mut entries: Vec<u8> = Vec::new();
    let mut count = 0;
    for client in clients.into_iter().take(max_entries) {
        let wire = ClientWire {
            client_id: client.client_id,
            certificate_id: client.certificate_id.to_string(),
            sni: client.sni,
            tls_version: client.tls_version,
            peer: client.peer,
            connected_at_ms: i64::try_from(client.connected_at.unix_timestamp_nanos() / 1_000_000).unwrap_or(0),
            endpoint: client.endpoint,
            chain: client.chain,
        };
        let Ok(entry) = serde_json::to_vec(&wire) else { continue };
        if entries.len() + entry.len() + 64 > max_bytes {
            break;
        }
        if count > 0 {
            entries.push(b',');
        }
        entries.extend_from_slice(&entry);
        count += 1;
    }
    let truncated = count < total;
    let mut out = Vec::with_capacity(entries.len() + 40);
    out.extend_from_slice(format!("{{\"truncated\":{truncated},\"clients\":[").as_bytes());
    out.extend_from_slice(&entries);
    out.extend_from_slice(b"]}");
    out
}

/// Another node's devices, each checked; `true` when its list was truncated (by it, or here
/// at `max_entries`). Entries that do not check are skipped and counted in the second number.
pub(super) fn decode_sessions(
    bytes: &[u8],
    node: &NodeId,
    max_entries: usize,
) -> Result<(Vec<ConnectedClient>, bool, usize), Dropped> {
    let wire: SessionsWire = serde_json::from_slice(bytes).map_err(|_| Dropped::Malformed)?;
    let truncated = wire.truncated || wire.clients.len() > max_entries;
    let mut skipped = 0;
    let mut clients = Vec::with_capacity(wire.clients.len().min(max_entries));
    for entry in wire.clients.into_iter().take(max_entries) {
        let fits = optional_fits(&entry.client_id)
            && optional_fits(&entry.sni)
            && text_fits(&entry.tls_version)
            && text_fits(&entry.peer)
            && optional_fits(&entry.endpoint)
            && optional_fits(&entry.chain);
        let certificate_id = CertificateId::parse(&entry.certificate_id).ok();
        let connected_at =
            time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(entry.connected_at_ms) * 1_000_000).ok();
        let (true, Some(certificate_id), Some(connected_at)) = (fits, certificate_id, connected_at) else {
            skipped += 1;
            continue;
        };
        clients.push(ConnectedClient {
            client_id: entry.client_id,
            certificate_id,
            sni: entry.sni,
            tls_version: entry.tls_version,
            peer: entry.peer,
            connected_at,
            endpoint: entry.endpoint,
            chain: entry.chain,
            node: Some(node.to_string()),
        });
    }
    Ok((clients, truncated, skipped))
}

pub(super) fn encode_refusals(refusals: Vec<(String, u64)>) -> Vec<u8> {
    serde_json::to_vec(&RefusalsWire { refusals }).unwrap_or_default()
}

/// Another node's refusals: only reasons this gateway knows ([`Refusal`]), each once.
pub(super) fn decode_refusals(bytes: &[u8]) -> Result<Vec<(&'static str, u64)>, Dropped> {
    let wire: RefusalsWire = serde_json::from_slice(bytes).map_err(|_| Dropped::Malformed)?;
    if wire.refusals.len() > Refusal::ALL.len() {
        return Err(Dropped::Malformed);
    }
    let mut seen = BTreeMap::new();
    for (reason, count) in wire.refusals {
        let known = Refusal::ALL.into_iter().find(|refusal| refusal.as_str() == reason).ok_or(Dropped::Malformed)?;
        if seen.insert(known.as_str(), count).is_some() {
            return Err(Dropped::Malformed);
        }
    }
    Ok(seen.into_iter().collect())
}

/// The client IDs `local` has connected through `configuration` on the chain its drain moves
/// devices to (none without a drain), at most `max_entries`.
pub(super) fn on_chain(
    local: &dyn DataPlane,
    account: &AccountId,
    configuration: &str,
    report: &EndpointReport,
    max_entries: usize,
) -> Vec<String> {
    let Some(drain) = &report.drain else { return Vec::new() };
    let mut ids: Vec<String> = local
        .connected_clients(account)
        .into_iter()
        .filter(|client| {
            client.endpoint.as_deref() == Some(configuration) && client.chain.as_deref() == Some(&drain.to_chain)
        })
        .filter_map(|client| client.client_id)
        .collect();
    ids.sort();
    ids.dedup();
    ids.truncate(max_entries);
    ids
}

pub(super) fn encode_endpoint(
    report: EndpointReport,
    on_chain: Vec<String>,
    max_entries: usize,
    max_bytes: usize,
) -> Vec<u8> {
    let mut truncated = false;
    let mut cap = |mut list: Vec<String>| {
        if list.len() > max_entries {
            list.truncate(max_entries);
            truncated = true;
        }
        list
    };
    let drain = report.drain.map(|drain| DrainWire {
        migration_id: drain.migration_id,
        to_chain: drain.to_chain,
        sessions: drain.sessions,
        closed: drain.closed,
        came_back: cap(drain.came_back),
        not_back: cap(drain.not_back),
        guard_tripped: drain.guard_tripped,
    });
    let on_chain = cap(on_chain);
    let chains: Vec<ChainWire> = report
        .chains
        .into_iter()
        .take(MAX_CHAINS)
        .map(|chain| ChainWire {
            chain: chain.chain,
            serving: chain.serving,
            connected: chain.connected,
            handshakes_completed: chain.handshakes_completed,
            handshakes_failed: chain.handshakes_failed.into_iter().take(MAX_ALERTS).collect(),
        })
        .collect();
    let mut wire = EndpointWire { truncated, chains, drain, on_chain };
    let encoded = serde_json::to_vec(&wire).unwrap_or_default();
    if encoded.len() <= max_bytes {
        return encoded;
    }
    // Only the client ID lists can be this large: the counters go without them.
    wire.truncated = true;
    wire.on_chain.clear();
    if let Some(drain) = &mut wire.drain {
        drain.came_back.clear();
        drain.not_back.clear();
    }
    serde_json::to_vec(&wire).unwrap_or_default()
}

/// Another node's report on a configuration, checked; `true` when it was truncated.
pub(super) fn decode_endpoint(bytes: &[u8], node: &NodeId, max_entries: usize) -> Result<(NodeReport, bool), Dropped> {
    let wire: EndpointWire = serde_json::from_slice(bytes).map_err(|_| Dropped::Malformed)?;
    let ids_fit = |list: &[String]| list.len() <= max_entries && list.iter().all(|id| text_fits(id));
    let chains_fit = wire.chains.len() <= MAX_CHAINS
        && wire.chains.iter().all(|chain| {
            text_fits(&chain.chain)
                && chain.handshakes_failed.len() <= MAX_ALERTS
                && chain.handshakes_failed.keys().all(|alert| text_fits(alert))
        });
    let drain_fits = wire.drain.as_ref().is_none_or(|drain| {
        text_fits(&drain.migration_id)
            && text_fits(&drain.to_chain)
            && optional_fits(&drain.guard_tripped)
            && ids_fit(&drain.came_back)
            && ids_fit(&drain.not_back)
    });
    if !(chains_fit && drain_fits && ids_fit(&wire.on_chain)) {
        return Err(Dropped::Malformed);
    }
    let chains = wire
        .chains
        .into_iter()
        .map(|chain| ChainStats {
            chain: chain.chain,
            serving: chain.serving,
            connected: chain.connected,
            handshakes_completed: chain.handshakes_completed,
            handshakes_failed: chain.handshakes_failed,
        })
        .collect();
    let drain = wire.drain.map(|drain| DrainReport {
        migration_id: drain.migration_id,
        to_chain: drain.to_chain,
        sessions: drain.sessions,
        closed: drain.closed,
        came_back: drain.came_back,
        not_back: drain.not_back,
        guard_tripped: drain.guard_tripped,
    });
    let report = EndpointReport { chains, drain, ..EndpointReport::default() };
    Ok((NodeReport { node: node.to_string(), report, on_chain: wire.on_chain }, wire.truncated))
}

/// The cluster's report from each node's (this node's first): per-chain counters summed (a
/// chain is serving if any node serves it), the drain of the first node's migration summed
/// over the nodes draining for it (a client ID counts as back when it is connected on the
/// target chain on any node), each node's own view, and the nodes missing.
pub(super) fn merge_reports(parts: Vec<NodeReport>, missing: Vec<String>) -> EndpointReport {
    let mut chains: BTreeMap<String, ChainStats> = BTreeMap::new();
    for part in &parts {
        for chain in &part.report.chains {
            let merged = chains.entry(chain.chain.clone()).or_default();
            merged.serving |= chain.serving;
            merged.connected = merged.connected.saturating_add(chain.connected);
            merged.handshakes_completed = merged.handshakes_completed.saturating_add(chain.handshakes_completed);
            for (alert, count) in &chain.handshakes_failed {
                let total = merged.handshakes_failed.entry(alert.clone()).or_default();
                *total = total.saturating_add(*count);
            }
        }
    }
    let chains = chains
        .into_iter()
        .map(|(chain, mut stats)| {
            stats.chain = chain;
            stats
        })
        .collect();
    let migration = parts.iter().find_map(|part| part.report.drain.as_ref()).map(|drain| drain.migration_id.clone());
    let drain = migration.map(|migration| {
        let draining: Vec<&NodeReport> = parts
            .iter()
            .filter(|part| part.report.drain.as_ref().is_some_and(|drain| drain.migration_id == migration))
            .collect();
        let mut merged = DrainReport { migration_id: migration, ..DrainReport::default() };
        let mut expected = BTreeSet::new();
        let mut back = BTreeSet::new();
        for part in &draining {
            let Some(drain) = &part.report.drain else { continue };
            if merged.to_chain.is_empty() {
                merged.to_chain = drain.to_chain.clone();
            }
            merged.sessions = merged.sessions.saturating_add(drain.sessions);
            merged.closed = merged.closed.saturating_add(drain.closed);
            if merged.guard_tripped.is_none() {
                merged.guard_tripped = drain.guard_tripped.clone();
            }
            expected.extend(drain.came_back.iter().chain(&drain.not_back).cloned());
            back.extend(drain.came_back.iter().cloned());
            if drain.to_chain == merged.to_chain {
                back.extend(part.on_chain.iter().cloned());
            }
        }
        let (came_back, not_back): (Vec<String>, Vec<String>) = expected.into_iter().partition(|id| back.contains(id));
        merged.came_back = came_back;
        merged.not_back = not_back;
        merged
    });
    let mut nodes: Vec<NodeView> = parts
        .into_iter()
        .map(|part| NodeView {
            serving: part.report.chains.iter().find(|chain| chain.serving).map(|chain| chain.chain.clone()),
            connected: part.report.chains.iter().map(|chain| chain.connected).fold(0, u64::saturating_add),
            drain_sessions: part.report.drain.as_ref().map_or(0, |drain| drain.sessions),
            drain_closed: part.report.drain.as_ref().map_or(0, |drain| drain.closed),
            guard_tripped: part.report.drain.and_then(|drain| drain.guard_tripped),
            node: part.node,
        })
        .collect();
    nodes.sort_by(|a, b| a.node.cmp(&b.node));
    let mut missing_nodes = missing;
    missing_nodes.sort();
    EndpointReport { chains, drain, nodes, missing_nodes }
}
#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> NodeId {
        NodeId::parse(name).unwrap()
    }

    fn config() -> OpsConfig {
        OpsConfig { max_nodes: 2, max_answer_bytes: 100, max_gathered_bytes: 150, ..OpsConfig::default() }
    }

    /// Feeds parts to a call's answers; each step's outcome as text.
    fn check(parts: &[Bytes], expected: &[&str], complete: &[&str]) {
        let mut answers = Answers::new(node("me"), &config());
        let outcomes: Vec<String> = parts
            .iter()
            .map(|part| match answers.take(part) {
                Ok(true) => "whole".to_owned(),
                Ok(false) => "part".to_owned(),
                Err(why) => format!("{why:?}"),
            })
            .collect();
        assert_eq!(outcomes, expected);
        let whole: Vec<&str> = answers.complete.iter().map(|(node, _)| node.as_str()).collect();
        assert_eq!(whole, complete);
        let held: usize = answers.assembling.values().map(|(_, bytes)| bytes.len()).sum();
        assert_eq!(answers.bytes, held + answers.complete.iter().map(|(_, bytes)| bytes.len()).sum::<usize>());
    }

    #[test]
    fn answers_are_assembled_within_their_bounds() {
        let a = node("a");
        let b = node("b");
        let c = node("c");
        let ten = [b'x'; 10];
        let sixty = [b'x'; 60];
        // One part, two parts in order.
        check(&[frame(&a, 0, 1, &ten)], &["whole"], &["a"]);
        check(&[frame(&a, 0, 2, &ten), frame(&a, 1, 2, &ten)], &["part", "whole"], &["a"]);
        // Out of order, repeated, after the whole: the node's answer is dropped.
        check(&[frame(&a, 1, 2, &ten), frame(&a, 0, 2, &ten)], &["Malformed", "Malformed"], &[]);
        check(&[frame(&a, 0, 1, &ten), frame(&a, 0, 1, &ten)], &["whole", "Malformed"], &["a"]);
        check(
            &[frame(&a, 0, 3, &ten), frame(&a, 2, 3, &ten), frame(&a, 1, 3, &ten)],
            &["part", "Malformed", "Malformed"],
            &[],
        );
        // This node's own name, garbage, a part number past the count.
        check(&[frame(&node("me"), 0, 1, &ten)], &["Malformed"], &[]);
        check(&[Bytes::from_static(b"\x01\x05ab")], &["Malformed"], &[]);
        check(&[Bytes::from_static(b"")], &["Malformed"], &[]);
        check(&[frame(&a, 2, 2, &ten)], &["Malformed"], &[]);
        check(&[frame(&a, 0, 0, &ten)], &["Malformed"], &[]);
        // At most two nodes.
        check(
            &[frame(&a, 0, 1, &ten), frame(&b, 0, 2, &ten), frame(&c, 0, 1, &ten), frame(&b, 1, 2, &ten)],
            &["whole", "part", "TooManyNodes", "whole"],
            &["a", "b"],
        );
        // 100 bytes per node, 150 per call: what was held for a dropped answer is given back.
        check(
            &[frame(&a, 0, 3, &sixty), frame(&a, 1, 3, &sixty), frame(&b, 0, 1, &sixty)],
            &["part", "OverBudget", "whole"],
            &["b"],
        );
        let ninety = [b'x'; 90];
        let fifty = [b'x'; 50];
        let twenty = [b'x'; 20];
        check(
            &[frame(&a, 0, 1, &ninety), frame(&b, 0, 2, &fifty), frame(&b, 1, 2, &twenty), frame(&c, 0, 1, &ten)],
            &["whole", "part", "OverBudget", "whole"],
            &["a", "c"],
        );
    }

    #[test]
    fn frames_round_trip_and_refuse_what_no_node_sends() {
        let a = node("gw-1");
        let framed = frame(&a, 3, 7, b"body");
        assert_eq!(parse_frame(&framed), Some(Part { node: a.clone(), part: 3, parts: 7, chunk: b"body" }));
        let mut bad_version = framed.to_vec();
        bad_version[0] = 2;
        assert_eq!(parse_frame(&bad_version), None);
        let mut bad_name = framed.to_vec();
        bad_name[2] = b'.';
        assert_eq!(parse_frame(&bad_name), None);
        assert_eq!(parse_frame(&framed[..8]), None, "cut in the part numbers");
        assert_eq!(parse_frame(&frame(&a, 0, 1, &vec![0u8; MAX_PART + 1])), None);
        assert_eq!(part_size(1024 * 1024), MAX_PART);
        assert_eq!(part_size(64 * 1024), 63 * 1024);
        assert_eq!(part_size(0), 4096);
    }

    #[test]
    fn requests_are_read_within_bounds() {
        let check = |payload: &str, subject: &str, expected: Option<(&str, Option<&str>)>| {
            let read = parse_ask_subject(subject).zip(decode_request(payload.as_bytes()));
            let read = read.as_ref().map(|((ask, _), request)| (ask.as_str(), request.configuration.as_deref()));
            assert_eq!(read, expected, "{subject} {payload}");
        };
        check(r#"{"from":"n1"}"#, "cf.ops.ask.sessions.111111111111", Some(("sessions", None)));
        check(
            r#"{"from":"n1","configuration":"iot:Data-ATS"}"#,
            "cf.ops.ask.endpoint.111111111111",
            Some(("endpoint", Some("iot:Data-ATS"))),
        );
        check(r#"{"from":"n1"}"#, "cf.ops.ask.everything.111111111111", None);
        check(r#"{"from":"n1"}"#, "cf.ops.ask.sessions.not-an-account", None);
        check(r#"{"from":"n1"}"#, "cf.ops.asked.sessions.111111111111", None);
        check(r#"{"from":"n1","configuration":""}"#, "cf.ops.ask.endpoint.111111111111", None);
        check(&format!(r#"{{"from":"{}"}}"#, "n".repeat(65)), "cf.ops.ask.refusals.111111111111", None);
        check(
            &format!(r#"{{"from":"n1","configuration":"{}"}}"#, "c".repeat(5000)),
            "cf.ops.ask.endpoint.111111111111",
            None,
        );
        check("not json", "cf.ops.ask.sessions.111111111111", None);
    }

    fn client(id: Option<&str>, certificate: u8, at: i64) -> ConnectedClient {
        ConnectedClient {
            client_id: id.map(str::to_owned),
            certificate_id: CertificateId::parse(&format!("{certificate:064x}")).unwrap(),
            sni: None,
            tls_version: "TLSv1.3".into(),
            peer: "192.0.2.1:5000".into(),
            connected_at: time::OffsetDateTime::from_unix_timestamp(at).unwrap(),
            endpoint: Some("iot:Data-ATS".into()),
            chain: Some("builtin".into()),
            node: None,
        }
    }

    #[test]
    fn device_lists_are_bounded_both_ways() {
        let n3 = node("n3");
        let clients = vec![client(Some("a"), 1, 100), client(None, 2, 200), client(Some("c"), 3, 300)];
        // Whole: every device comes back, named with its node.
        let (listed, truncated, skipped) =
            decode_sessions(&encode_sessions(clients.clone(), 10, 1 << 20), &n3, 10).unwrap();
        assert!(!truncated);
        assert_eq!(skipped, 0);
        let expected: Vec<ConnectedClient> =
            clients.iter().cloned().map(|c| ConnectedClient { node: Some("n3".into()), ..c }).collect();
        assert_eq!(listed, expected);
        // Cut by the sender at 2 entries, or at its byte bound; cut by the reader at 1.
        let (listed, truncated, _) = decode_sessions(&encode_sessions(clients.clone(), 2, 1 << 20), &n3, 10).unwrap();
        assert_eq!((listed.len(), truncated), (2, true));
        let (listed, truncated, _) = decode_sessions(&encode_sessions(clients.clone(), 10, 300), &n3, 10).unwrap();
        assert!(listed.len() < 3 && truncated, "{}", listed.len());
        let (listed, truncated, _) = decode_sessions(&encode_sessions(clients, 10, 1 << 20), &n3, 1).unwrap();
        assert_eq!((listed.len(), truncated), (1, true));
        // Entries that do not check are skipped; a body that is not a list is malformed.
        let long = "x".repeat(MAX_TEXT + 1);
        let body = format!(
            r#"{{"truncated":false,"clients":[
                {{"client_id":"ok","certificate_id":"{:064x}","sni":null,"tls_version":"TLSv1.3","peer":"p","connected_at_ms":5,"endpoint":null,"chain":null}},
                {{"client_id":"bad-id","certificate_id":"zz","sni":null,"tls_version":"TLSv1.3","peer":"p","connected_at_ms":5,"endpoint":null,"chain":null}},
                {{"client_id":"{long}","certificate_id":"{:064x}","sni":null,"tls_version":"TLSv1.3","peer":"p","connected_at_ms":5,"endpoint":null,"chain":null}},
                {{"client_id":"far","certificate_id":"{:064x}","sni":null,"tls_version":"TLSv1.3","peer":"p","connected_at_ms":9223372036854775807,"endpoint":null,"chain":null}}
            ]}}"#,
            1, 2, 3
        );
        let (listed, _, skipped) = decode_sessions(body.as_bytes(), &n3, 10).unwrap();
        assert_eq!(listed.iter().map(|c| c.client_id.as_deref().unwrap()).collect::<Vec<_>>(), ["ok"]);
        assert_eq!(skipped, 3);
        for garbage in ["", "[]", r#"{"clients":3}"#, r#"{"truncated":false}"#, "{\"truncated\":false,\"clients\":["] {
            assert!(decode_sessions(garbage.as_bytes(), &n3, 10).is_err(), "{garbage}");
        }
    }

    #[test]
    fn refusals_are_known_reasons_each_once() {
        let check = |body: &str, expected: Result<Vec<(&str, u64)>, Dropped>| {
            assert_eq!(decode_refusals(body.as_bytes()), expected, "{body}");
        };
        check(r#"{"refusals":[["Revoked",3],["Expired",1]]}"#, Ok(vec![("Expired", 1), ("Revoked", 3)]));
        check(r#"{"refusals":[]}"#, Ok(vec![]));
        check(r#"{"refusals":[["Revoked",3],["Revoked",1]]}"#, Err(Dropped::Malformed));
        check(r#"{"refusals":[["<script>",3]]}"#, Err(Dropped::Malformed));
        check(r#"{"refusals":[["Revoked",-1]]}"#, Err(Dropped::Malformed));
        check("[]", Err(Dropped::Malformed));
        let many: Vec<String> = (0..18).map(|_| r#"["Revoked",1]"#.to_owned()).collect();
        check(&format!(r#"{{"refusals":[{}]}}"#, many.join(",")), Err(Dropped::Malformed));
        let encoded = encode_refusals(vec![("Inactive".into(), 2)]);
        assert_eq!(decode_refusals(&encoded), Ok(vec![("Inactive", 2)]));
    }

    fn chain(label: &str, serving: bool, connected: u64, completed: u64, failed: &[(&str, u64)]) -> ChainStats {
        ChainStats {
            chain: label.into(),
            serving,
            connected,
            handshakes_completed: completed,
            handshakes_failed: failed.iter().map(|(alert, count)| ((*alert).to_owned(), *count)).collect(),
        }
    }

    fn drain(
        migration: &str,
        to: &str,
        sessions: usize,
        closed: usize,
        back: &[&str],
        not_back: &[&str],
    ) -> DrainReport {
        DrainReport {
            migration_id: migration.into(),
            to_chain: to.into(),
            sessions,
            closed,
            came_back: back.iter().map(|id| (*id).to_owned()).collect(),
            not_back: not_back.iter().map(|id| (*id).to_owned()).collect(),
            guard_tripped: None,
        }
    }

    fn part(node: &str, chains: Vec<ChainStats>, drain: Option<DrainReport>, on_chain: &[&str]) -> NodeReport {
        NodeReport {
            node: node.into(),
            report: EndpointReport { chains, drain, ..EndpointReport::default() },
            on_chain: on_chain.iter().map(|id| (*id).to_owned()).collect(),
        }
    }

    #[test]
    fn reports_are_summed_over_nodes() {
        let n1 = part(
            "n1",
            vec![chain("old", false, 2, 10, &[("unknown_ca", 1)]), chain("new", true, 1, 4, &[])],
            Some(drain("m1", "new", 5, 3, &["a"], &["b", "c"])),
            &["a"],
        );
        let n2 = part(
            "n2",
            vec![chain("old", true, 4, 7, &[("unknown_ca", 2), ("bad_certificate", 1)])],
            Some(drain("m1", "new", 2, 2, &[], &["d"])),
            // "b" left n1 on the old chain and came back here on the new one.
            &["b", "x"],
        );
        let n3 = part("n3", vec![], Some(drain("m0", "older", 9, 9, &["z"], &[])), &[]);
        let merged = merge_reports(vec![n1, n2, n3], vec!["n4".into()]);
        assert_eq!(
            merged.chains,
            vec![
                chain("new", true, 1, 4, &[]),
                chain("old", true, 6, 17, &[("bad_certificate", 1), ("unknown_ca", 3)]),
            ]
        );
        let drained = merged.drain.unwrap();
        assert_eq!((drained.migration_id.as_str(), drained.to_chain.as_str()), ("m1", "new"));
        assert_eq!((drained.sessions, drained.closed), (7, 5), "n3 drains for another migration");
        assert_eq!(drained.came_back, ["a", "b"]);
        assert_eq!(drained.not_back, ["c", "d"]);
        let views: Vec<(&str, Option<&str>, u64, usize)> = merged
            .nodes
            .iter()
            .map(|view| (view.node.as_str(), view.serving.as_deref(), view.connected, view.drain_sessions))
            .collect();
        assert_eq!(views, [("n1", Some("new"), 3, 5), ("n2", Some("old"), 4, 2), ("n3", None, 0, 9)]);
        assert_eq!(merged.missing_nodes, ["n4"]);
        // One node alone: its report, with its own view.
        let alone = merge_reports(vec![part("n1", vec![chain("c", true, 1, 1, &[])], None, &[])], vec![]);
        assert_eq!(alone.chains, vec![chain("c", true, 1, 1, &[])]);
        assert_eq!(alone.drain, None);
        assert_eq!(alone.nodes.len(), 1);
    }

    #[test]
    fn endpoint_reports_travel_within_bounds() {
        let n2 = node("n2");
        let report = EndpointReport {
            chains: vec![chain("new", true, 3, 9, &[("unknown_ca", 2)])],
            drain: Some(DrainReport {
                guard_tripped: Some("guard: 3".into()),
                ..drain("m1", "new", 4, 1, &["a"], &["b", "c"])
            }),
            ..EndpointReport::default()
        };
        let encoded = encode_endpoint(report.clone(), vec!["a".into()], 10, 1 << 20);
        let (decoded, truncated) = decode_endpoint(&encoded, &n2, 10).unwrap();
        assert!(!truncated);
        assert_eq!(decoded, NodeReport { node: "n2".into(), report: report.clone(), on_chain: vec!["a".into()] });
        // Lists cut at the sender's bound; dropped past its byte bound; refused past the reader's.
        let (decoded, truncated) =
            decode_endpoint(&encode_endpoint(report.clone(), vec![], 1, 1 << 20), &n2, 10).unwrap();
        assert!(truncated);
        assert_eq!(decoded.report.drain.unwrap().not_back, ["b"]);
        let (decoded, truncated) = decode_endpoint(&encode_endpoint(report.clone(), vec![], 10, 200), &n2, 10).unwrap();
        assert!(truncated);
        assert!(decoded.report.drain.unwrap().not_back.is_empty());
        assert_eq!(decoded.report.chains, report.chains, "the counters survive the cut");
        assert_eq!(decode_endpoint(&encoded, &n2, 1), Err(Dropped::Malformed));
        let long_chain = EndpointReport { chains: vec![chain(&"c".repeat(MAX_TEXT + 1), true, 1, 1, &[])], ..report };
        assert_eq!(
            decode_endpoint(&encode_endpoint(long_chain, vec![], 10, 1 << 20), &n2, 10),
            Err(Dropped::Malformed)
        );
        assert_eq!(decode_endpoint(b"{}", &n2, 10), Err(Dropped::Malformed));
    }
}
