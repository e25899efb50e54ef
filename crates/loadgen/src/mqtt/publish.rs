//! Publish throughput and end-to-end latency: publishers send on `loadgen/<n>`, subscribers on
//! `loadgen/#` receive. One subscriber and one publisher is 1 to 1, many publishers fan-in, one
//! publisher and many subscribers fan-out. Messages carry their send time, so subscribers
//! measure end-to-end latency. The rate counts messages delivered to subscribers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use certfleet_mqtt::{self as mqtt, Packet, PacketId, ProtocolVersion, QoS, TopicFilter, TopicName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Broker, Client, MqttArgs, Outcome};

/// Unacknowledged QoS 1 messages per publisher.
const WINDOW: usize = 64;

/// How long to wait for messages still in flight after the last was sent.
const MAX_DRAIN: Duration = Duration::from_secs(10);

pub(super) async fn run(
    broker: &Arc<Broker>,
    args: &MqttArgs,
    qos: QoS,
    publishers: usize,
    subscribers: usize,
    deadline: Instant,
) -> anyhow::Result<Outcome> {
    let epoch = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let delivered = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let budget = Arc::new(AtomicU64::new(args.count));

    // Subscribers first, every subscription acknowledged before anything is published.
    // --subscribe-addr: the subscribers on another node than the publishers.
    let subscribe_addr = args.subscribe_addr.clone().unwrap_or_else(|| broker.addr.clone());
    let permits = Arc::new(tokio::sync::Semaphore::new(args.concurrency));
    let mut subscribing = Vec::new();
    for index in 0..subscribers {
        let (broker, permits, addr) = (broker.clone(), permits.clone(), subscribe_addr.clone());
        subscribing.push(tokio::spawn(async move {
            let _permit = permits.acquire_owned().await?;
            let identity = &broker.identities[index % broker.identities.len()];
            subscribe(&broker, &addr, &identity.full_handshakes, &format!("loadgen-subscriber-{index}"), qos).await
        }));
    }
    let mut receivers = Vec::new();
    for subscriber in subscribing {
        let subscriber = subscriber.await?.context("subscribing")?;
        let (stop, delivered) = (stop.clone(), delivered.clone());
        receivers.push(tokio::spawn(async move { receive(subscriber, epoch, &stop, &delivered).await }));
    }

    let rate_each = (args.publish_rate > 0.0).then(|| args.publish_rate / publishers as f64);
    let mut publishing = Vec::new();
    for index in 0..publishers {
        let identity = &broker.identities[(index + subscribers) % broker.identities.len()];
        let client =
            Client::connect(broker, &identity.full_handshakes, None, &format!("loadgen-publisher-{index}"), 60).await?;
        let (sent, budget, payload_size) = (sent.clone(), budget.clone(), args.payload);
        publishing.push(tokio::spawn(async move {
            publisher(client, index, qos, payload_size, rate_each, deadline, epoch, &sent, &budget).await
        }));
    }
    let mut failed = 0;
    for publisher in publishing {
        if publisher.await.map_or(true, |result| result.is_err()) {
            failed += 1;
        }
    }
    // Wait for what is in flight: until every copy arrived, or nothing arrived for 400 ms.
    let expected = sent.load(Ordering::Relaxed) * subscribers as u64;
    let draining = Instant::now();
    let mut last = delivered.load(Ordering::Relaxed);
    while last < expected && draining.elapsed() < MAX_DRAIN {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let now = delivered.load(Ordering::Relaxed);
        if now == last {
            break;
        }
        last = now;
    }
    stop.store(true, Ordering::Relaxed);
    let (mut received, mut latencies_us) = (0u64, Vec::new());
    for receiver in receivers {
        let (count, latencies) = receiver.await?;
        received += count;
        latencies_us.extend(latencies);
    }
    let sent = sent.load(Ordering::Relaxed);
    let lost = expected.saturating_sub(received);
    let mut notes = Vec::new();
    if lost > 0 {
        notes.push(format!(
            "{lost} of {expected} deliveries were not received ({sent} sent x {subscribers} subscribers)"
        ));
    }
    Ok(Outcome {
        ok: received,
        latencies_us,
        failures: failed,
        details: [
            ("publishers", publishers.into()),
            ("subscribers", subscribers.into()),
            ("qos", (qos as u8).into()),
            ("sent", sent.into()),
            ("expected_deliveries", expected.into()),
            ("lost", lost.into()),
        ]
        .into_iter()
        .collect(),
        notes,
        ..Outcome::default()
    })
}

async fn subscribe(
    broker: &Broker,
    addr: &str,
    config: &Arc<rustls::ClientConfig>,
    client_id: &str,
    qos: QoS,
) -> anyhow::Result<Client> {
    let mut subscriber = Client::connect_at(broker, addr, config, client_id, 60).await?;
    let subscribe = mqtt::Subscribe {
        packet_id: PacketId::new(1).context("packet id")?,
        subscriptions: vec![mqtt::Subscription {
            filter: TopicFilter::new("loadgen/#")?,
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: Default::default(),
        }],
        properties: Default::default(),
    };
    subscriber.send(&Packet::Subscribe(subscribe)).await?;
    match subscriber.receive().await? {
        Packet::SubAck(_) => Ok(subscriber),
        other => bail!("expected SUBACK, got {other:?}"),
    }
}

/// Receives until told to stop (or the broker closes), acknowledging QoS 1 messages; returns
/// how many arrived and their latencies.
async fn receive(subscriber: Client, epoch: Instant, stop: &AtomicBool, delivered: &AtomicU64) -> (u64, Vec<u32>) {
    let (mut received, mut latencies) = (0u64, Vec::new());
    let Client { stream, mut buffer, .. } = subscriber;
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut acks = BytesMut::new();
    'reading: loop {
        // Take every whole packet buffered, acknowledge them in one write, then read more.
        let before = received;
        loop {
            match mqtt::decode(&mut buffer, ProtocolVersion::V311, mqtt::MAX_PACKET_SIZE) {
                Ok(Some(Packet::Publish(publish))) => {
                    if let Some(sent_at) = publish.payload.get(..8) {
                        let sent_nanos = u64::from_be_bytes(sent_at.try_into().unwrap_or([0; 8]));
                        let now = epoch.elapsed().as_nanos() as u64;
                        latencies.push((now.saturating_sub(sent_nanos) / 1000).min(u64::from(u32::MAX)) as u32);
                    }
                    received += 1;
                    if let Some(id) = publish.packet_id
                        && mqtt::encode(&Packet::PubAck(mqtt::PubAck::new(id)), ProtocolVersion::V311, &mut acks)
                            .is_err()
                    {
                        break 'reading;
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => break 'reading,
            }
        }
        delivered.fetch_add(received - before, Ordering::Relaxed);
        if !acks.is_empty() {
            if writer.write_all(&acks).await.is_err() {
                break;
            }
            acks.clear();
        }
        let read = tokio::select! {
            read = reader.read_buf(&mut buffer) => read,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {
                if stop.load(Ordering::Relaxed) { break } else { continue }
            }
        };
        if !matches!(read, Ok(count) if count > 0) {
            break;
        }
    }
    let mut disconnect = BytesMut::new();
    if mqtt::encode(&Packet::Disconnect(Default::default()), ProtocolVersion::V311, &mut disconnect).is_ok() {
        let _ = writer.write_all(&disconnect).await;
    }
    (received, latencies)
}

#[allow(clippy::too_many_arguments)]
async fn publisher(
    client: Client,
    index: usize,
    qos: QoS,
    payload_size: usize,
    rate: Option<f64>,
    deadline: Instant,
    epoch: Instant,
    sent: &AtomicU64,
    budget: &AtomicU64,
) -> anyhow::Result<()> {
    let topic = TopicName::new(format!("loadgen/{index}"))?;
    let Client { stream, buffer, .. } = client;
    let (mut reader, mut writer) = tokio::io::split(stream);
    let window = Arc::new(tokio::sync::Semaphore::new(WINDOW));
    let acks = {
        let window = window.clone();
        tokio::spawn(async move {
            let mut buffer = buffer;
            loop {
                match mqtt::decode(&mut buffer, ProtocolVersion::V311, mqtt::MAX_PACKET_SIZE) {
                    Ok(Some(Packet::PubAck(_))) => window.add_permits(1),
                    Ok(Some(_)) => {}
                    Ok(None) => match reader.read_buf(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    },
                    Err(_) => return,
                }
            }
        })
    };
    let started = Instant::now();
    let mut next_id: u16 = 0;
    let mut published = 0u64;
    let mut out = BytesMut::with_capacity(64 * 1024);
    while Instant::now() < deadline
        && budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| left.checked_sub(1)).is_ok()
    {
        if let Some(rate) = rate {
            // Paced: the n-th message goes at n / rate seconds; flush what waits before sleeping.
            let due = started + Duration::from_secs_f64(published as f64 / rate);
            if due > Instant::now() {
                writer.write_all(&out).await?;
                out.clear();
                tokio::time::sleep_until(due.min(deadline).into()).await;
            }
        }
        let packet_id = if qos == QoS::AtMostOnce {
            None
        } else {
            window.acquire().await?.forget();
            next_id = next_id.checked_add(1).unwrap_or(1);
            PacketId::new(next_id)
        };
        let mut payload = vec![0u8; payload_size];
        payload[..8].copy_from_slice(&(epoch.elapsed().as_nanos() as u64).to_be_bytes());
        let publish = mqtt::Publish {
            dup: false,
            qos,
            retain: false,
            topic: Some(topic.clone()),
            packet_id,
            properties: Default::default(),
            payload: Bytes::from(payload),
        };
        mqtt::encode(&Packet::Publish(publish), ProtocolVersion::V311, &mut out)?;
        // Batch small QoS 0 writes; QoS 1 is paced by its window anyway.
        if out.len() > 32 * 1024 || qos != QoS::AtMostOnce {
            writer.write_all(&out).await?;
            out.clear();
        }
        published += 1;
        sent.fetch_add(1, Ordering::Relaxed);
    }
    writer.write_all(&out).await?;
    if qos != QoS::AtMostOnce {
        // Wait (briefly) for the outstanding acknowledgements.
        let _ = tokio::time::timeout(Duration::from_secs(2), window.acquire_many(WINDOW as u32)).await;
    }
    let mut disconnect = BytesMut::new();
    mqtt::encode(&Packet::Disconnect(Default::default()), ProtocolVersion::V311, &mut disconnect)?;
    writer.write_all(&disconnect).await?;
    acks.abort();
    Ok(())
}
