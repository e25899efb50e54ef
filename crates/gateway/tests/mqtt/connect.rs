//! CONNECT and CONNACK: versions, what the server grants, client IDs, and the first packet's rules.

use certfleet_gateway::ConnectRefusal;
use certfleet_mqtt::{Packet, ProtocolVersion, QoS, ReasonCode};
use std::num::{NonZeroU16, NonZeroU32};

use crate::harness::*;

#[tokio::test(start_paused = true)]
async fn connack_in_both_versions() {
    let harness = Harness::new();
    let device = identity(ACCOUNT_A, 1);

    // The harness sends a user name and a password, as the AWS SDKs do: both are ignored.
    let (client, connack) = harness.connect(&device, Options::v311("old")).await;
    assert!(!connack.session_present);
    assert!(connack.properties.is_empty(), "3.1.1 has no properties");
    client.disconnect().await;

    let (client, connack) = harness.connect(&device, Options::v5("new")).await;
    assert!(!connack.session_present);
    let properties = connack.properties;
    assert_eq!(properties.receive_maximum, NonZeroU16::new(100));
    assert_eq!(properties.topic_alias_maximum, Some(10));
    assert_eq!(properties.maximum_packet_size, NonZeroU32::new(146 * 1024));
    assert_eq!(properties.server_keep_alive, None, "300 s is within the maximum");
    assert_eq!(properties.session_expiry_interval, None, "0 was granted as asked");
    assert_eq!(properties.assigned_client_identifier, None);
    let listed: Vec<Option<String>> = harness.live.list().into_iter().map(|info| info.client_id).collect();
    assert_eq!(listed, vec![Some("new".to_owned())], "the operator view knows the client ID");
    client.disconnect().await;
}

#[tokio::test(start_paused = true)]
async fn keep_alive_and_session_expiry_are_capped() {
    let harness = Harness::new();
    let device = identity(ACCOUNT_A, 1);
    let check = |keep_alive: u16, expiry: u32, expected_keep_alive: Option<u16>, expected_expiry: Option<u32>| {
        let harness = &harness;
        let device = &device;
        async move {
            let mut options = Options::v5("c").persistent(expiry);
            options.clean_start = true;
            options.keep_alive = keep_alive;
            let (client, connack) = harness.connect(device, options).await;
            assert_eq!(connack.properties.server_keep_alive, expected_keep_alive, "keep alive {keep_alive}");
            assert_eq!(connack.properties.session_expiry_interval, expected_expiry, "expiry {expiry}");
            client.disconnect().await;
        }
    };
    check(0, 0, Some(1200), None).await;
    check(5000, 60, Some(1200), None).await;
    check(1200, 3600, None, None).await;
    check(30, 7200, None, Some(3600)).await;
    check(30, u32::MAX, None, Some(3600)).await;
}

#[tokio::test(start_paused = true)]
async fn empty_client_ids() {
    let harness = Harness::new();
    let device = identity(ACCOUNT_A, 1);

    // mosquitto_pub sends an empty ID with clean session: one is assigned.
    let (client, connack) = harness.connect(&device, Options::v311("")).await;
    assert!(!connack.session_present);
    let assigned = harness.live.list()[0].client_id.clone().unwrap();
    assert!(assigned.starts_with("auto-"), "{assigned}");
    client.disconnect().await;

    let (client, connack) = harness.connect(&device, Options::v5("")).await;
    let assigned = connack.properties.assigned_client_identifier.expect("MQTT 5 is told the assigned ID");
    assert!(assigned.starts_with("auto-") && assigned.len() > 30, "{assigned}");
    client.disconnect().await;

    // MQTT 3.1.1 forbids an empty ID without clean session: identifier rejected.
    let mut client = harness.open(&device, ProtocolVersion::V311);
    let connack = client.connect(Options::v311("").persistent(0)).await;
    assert_eq!(connack.reason_code, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
    assert!(client.closed().await.is_empty());

    let mut client = harness.open(&device, ProtocolVersion::V5);
    let connack = client.connect(Options::v5(&"x".repeat(129))).await;
    assert_eq!(connack.reason_code, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID, "AWS allows 128 bytes");
    client.closed().await;
}

/// The attacker picks a client ID that would stand for other clients once substituted into a
/// policy or a topic: refused with "identifier rejected" in both versions, counted, and nothing
/// of the broker changes (no session, no lifecycle event, the victim undisturbed).
#[tokio::test(start_paused = true)]
async fn client_ids_that_could_name_other_clients_are_refused() {
    let harness = Harness::new();
    let victim = identity(ACCOUNT_A, 1);
    let (mut watcher, _) = harness.connect(&victim, Options::v5("victim")).await;
    watcher.subscribe_to("$aws/events/#", QoS::AtMostOnce).await;
    watcher.subscribe_to("clients/#", QoS::AtMostOnce).await;
    let attacker = identity(ACCOUNT_A, 2);
    let cases = [
        ("+", "client_id_wildcard"),
        ("#", "client_id_wildcard"),
        ("clients/+", "client_id_wildcard"),
        ("victim#", "client_id_wildcard"),
        ("$aws", "client_id_reserved"),
    ];
    for (client_id, _) in cases {
        for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
            let mut client = harness.open(&attacker, version);
            let options = match version {
                ProtocolVersion::V311 => Options::v311(client_id),
                ProtocolVersion::V5 => Options::v5(client_id),
            };
            // 3.1.1 reads it as return code 2 (identifier rejected), MQTT 5 as 0x85.
            let connack = client.connect(options).await;
            assert_eq!(connack.reason_code, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID, "{client_id:?} {version:?}");
            assert!(!connack.session_present);
            assert!(client.closed().await.is_empty(), "{client_id:?}: closed after the CONNACK");
        }
    }
    let counts = harness.broker.counters().connect_refusals();
    for reason in ["client_id_wildcard", "client_id_reserved"] {
        let expected = 2 * cases.iter().filter(|(_, why)| *why == reason).count() as u64;
        let counted = counts.iter().find(|(refusal, _)| refusal.as_str() == reason).map(|(_, count)| *count);
        assert_eq!(counted, Some(expected), "{reason}");
    }
    assert_eq!(harness.broker.session_count(&attacker.account), 1, "only the victim's session");
    let seen = harness.recorder.seen.lock().unwrap().clone();
    assert_eq!(seen, vec![("connected".to_owned(), "victim".to_owned())], "no refused client ever connected");
    watcher.nothing().await;
    watcher.send(Packet::PingReq).await;
    assert_eq!(watcher.recv().await, Packet::PingResp, "the victim is not taken over");

    // `/` is a client ID character (AWS allows it); the policies keep it in its level.
    let (client, _) = harness.connect(&attacker, Options::v311("victim/x")).await;
    client.disconnect().await;
}

/// The client-ID rule by itself (NUL never reaches it over the wire: the codec refuses any
/// string holding U+0000 as malformed).
#[test]
fn which_client_ids_are_refused() {
    let check = |client_id: &str, expected: Option<&str>| {
        let refusal = ConnectRefusal::of_client_id(client_id, 128);
        assert_eq!(refusal.map(ConnectRefusal::as_str), expected, "{client_id:?}");
        if let Some(refusal) = refusal {
            assert_eq!(refusal.reason_code(), ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
            assert_eq!(refusal.reason_code().to_v311_connack(), Some(2), "identifier rejected");
        }
    };
    check("sensor-1", None);
    check("site/sensor-1", None);
    check("a b*c?d:e", None);
    check("+", Some("client_id_wildcard"));
    check("#", Some("client_id_wildcard"));
    check("a/+/b", Some("client_id_wildcard"));
    check("a#", Some("client_id_wildcard"));
    check("a\0b", Some("client_id_nul"));
    check("$aws", Some("client_id_reserved"));
    check("a$", None);
    check(&"x".repeat(128), None);
    check(&"x".repeat(129), Some("client_id_too_long"));
    check(&"+".repeat(129), Some("client_id_too_long"));
}

#[tokio::test(start_paused = true)]
async fn unsupported_protocol_level_is_answered_in_3_1_1() {
    let harness = Harness::new();
    let mut client = harness.open(&identity(ACCOUNT_A, 1), ProtocolVersion::V311);
    // CONNECT "MQTT" level 6, clean session, keep alive 60, client ID "a".
    client.send_raw(&[0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 6, 0x02, 0, 60, 0, 1, b'a']).await;
    let packets = client.closed().await;
    assert!(
        matches!(&packets[..], [Packet::ConnAck(connack)] if connack.reason_code == ReasonCode::UNSUPPORTED_PROTOCOL_VERSION),
        "{packets:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn malformed_v5_connect_gets_its_reason_code() {
    let harness = Harness::new();
    let mut client = harness.open(&identity(ACCOUNT_A, 1), ProtocolVersion::V5);
    // CONNECT "MQTT" level 5 with the reserved flag bit set.
    client.send_raw(&[0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x03, 0, 60, 0, 0, 1, b'a']).await;
    let packets = client.closed().await;
    assert!(
        matches!(&packets[..], [Packet::ConnAck(connack)] if connack.reason_code == ReasonCode::MALFORMED_PACKET),
        "{packets:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_first_packet_must_be_connect_in_time() {
    let harness = Harness::new();
    let device = identity(ACCOUNT_A, 1);

    let mut client = harness.open(&device, ProtocolVersion::V311);
    client.send(Packet::Publish(publish("a", "early", QoS::AtMostOnce, None))).await;
    assert!(client.closed().await.is_empty(), "closed without an answer");

    let mut client = harness.open(&device, ProtocolVersion::V311);
    client.send(Packet::PingReq).await;
    assert!(client.closed().await.is_empty());

    let mut client = harness.open(&device, ProtocolVersion::V311);
    let started = tokio::time::Instant::now();
    assert!(client.closed().await.is_empty());
    assert_eq!(started.elapsed().as_secs(), 10, "the connect timeout");

    // Half a CONNECT, then silence: the same timeout.
    let mut client = harness.open(&device, ProtocolVersion::V311);
    client.send_raw(&[0x10, 13, 0, 4, b'M']).await;
    assert!(client.closed().await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_second_connect_is_a_protocol_error() {
    let harness = Harness::new();
    let device = identity(ACCOUNT_A, 1);
    let (mut client, _) = harness.connect(&device, Options::v5("twice")).await;
    client.connect_again(Options::v5("twice")).await;
    assert_eq!(client.disconnected().await, Some(ReasonCode::PROTOCOL_ERROR));

    let (mut client, _) = harness.connect(&device, Options::v311("twice")).await;
    client.connect_again(Options::v311("twice")).await;
    assert_eq!(client.disconnected().await, None, "3.1.1: just closed");
    assert_eq!(harness.broker.session_count(&device.account), 0);
}

#[tokio::test(start_paused = true)]
async fn a_node_shutting_down_ends_its_sessions_and_turns_new_ones_away() {
    let harness = Harness::new();
    let device = identity(ACCOUNT_A, 1);
    let (mut connected, _) = harness.connect(&device, Options::v5("connected").will("wills/connected", "gone")).await;
    let mut waiting = harness.open(&device, ProtocolVersion::V5);
    // The connection without CONNECT yet holds no session: it is told at once, and closed
    // without a word. The session is left for the drain to tell in its turn.
    let begun = harness.live.begin_shutdown();
    assert_eq!((begun.sessions.len(), begun.closed_before_connect), (1, 1));
    assert!(waiting.closed().await.is_empty());

    // A connection that joins now is told to close as it joins: its CONNECT (already sent) is
    // refused with "server unavailable", which makes devices try elsewhere (MQTT 3.1.1: 3).
    for version in [ProtocolVersion::V5, ProtocolVersion::V311] {
        let mut client = harness.open(&device, version);
        let options = Options { version, ..Options::v5("late") };
        assert_eq!(client.connect(options).await.reason_code, ReasonCode::SERVER_UNAVAILABLE, "{version:?}");
        assert!(client.closed().await.is_empty());
    }
    let refusals = harness.broker.counters().connect_refusals();
    assert!(refusals.contains(&(ConnectRefusal::ServerShuttingDown, 2)), "{refusals:?}");

    // The drain tells the session: it hears DISCONNECT 0x8B and its end is a server-initiated
    // disconnect (the will published).
    let session = begun.sessions[0];
    assert!(harness.live.close_for_shutdown(session));
    assert!(!harness.live.close_for_shutdown(session), "told once");
    assert_eq!(connected.disconnected().await, Some(ReasonCode::SERVER_SHUTTING_DOWN));
    let seen = harness.recorder.seen.lock().unwrap().clone();
    assert!(seen.contains(&("SERVER_INITIATED_DISCONNECT".into(), "connected".into())), "{seen:?}");
    assert_eq!(harness.broker.counters().wills.load(std::sync::atomic::Ordering::Relaxed), 1);
}
