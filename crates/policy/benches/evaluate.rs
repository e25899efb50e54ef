//! Benchmarks of the hot path: a device's Publish checked against a realistic four-statement
//! policy keyed on `${iot:Connection.Thing.ThingName}` (every message a gateway receives), and
//! the one-off parse for comparison.

use std::collections::BTreeMap;
use std::hint::black_box;

use certfleet_policy::{Action, Context, Policy, Request, Thing, evaluate};
use criterion::{Criterion, criterion_group, criterion_main};

const POLICY: &str = r#"{
  "Version": "2012-10-17",
  "Statement": [
    {
      "Effect": "Allow",
      "Action": "iot:Connect",
      "Resource": "arn:aws:iot:us-east-1:123456789012:client/${iot:Connection.Thing.ThingName}",
      "Condition": {"Bool": {"iot:Connection.Thing.IsAttached": "true"}}
    },
    {
      "Effect": "Allow",
      "Action": ["iot:Publish", "iot:Receive"],
      "Resource": [
        "arn:aws:iot:us-east-1:123456789012:topic/fleet/${iot:Connection.Thing.ThingName}/*",
        "arn:aws:iot:us-east-1:123456789012:topic/$aws/things/${iot:Connection.Thing.ThingName}/shadow/*"
      ]
    },
    {
      "Effect": "Allow",
      "Action": "iot:Subscribe",
      "Resource": [
        "arn:aws:iot:us-east-1:123456789012:topicfilter/fleet/${iot:Connection.Thing.ThingName}/*",
        "arn:aws:iot:us-east-1:123456789012:topicfilter/$aws/things/${iot:Connection.Thing.ThingName}/shadow/*"
      ]
    },
    {
      "Effect": "Deny",
      "Action": "iot:Publish",
      "Resource": "arn:aws:iot:us-east-1:123456789012:topic/fleet/${iot:Connection.Thing.ThingName}/admin/*"
    }
  ]
}"#;

/// A typical ten-statement fleet policy: connect by thing name, per-device telemetry, commands,
/// shadows and jobs, a per-floor broadcast from a thing attribute, a certificate-CN scoped topic,
/// and two explicit denies.
const POLICY_10: &str = r#"{
  "Version": "2012-10-17",
  "Statement": [
    {"Effect": "Allow", "Action": "iot:Connect", "Resource": "arn:aws:iot:us-east-1:123456789012:client/${iot:Connection.Thing.ThingName}"},
    {"Effect": "Allow", "Action": "iot:Publish", "Resource": "arn:aws:iot:us-east-1:123456789012:topic/fleet/${iot:Connection.Thing.ThingName}/telemetry/*"},
    {"Effect": "Allow", "Action": ["iot:Subscribe"], "Resource": "arn:aws:iot:us-east-1:123456789012:topicfilter/fleet/${iot:Connection.Thing.ThingName}/commands/*"},
    {"Effect": "Allow", "Action": ["iot:Receive"], "Resource": "arn:aws:iot:us-east-1:123456789012:topic/fleet/${iot:Connection.Thing.ThingName}/commands/*"},
    {"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"], "Resource": "arn:aws:iot:us-east-1:123456789012:topic/$aws/things/${iot:Connection.Thing.ThingName}/shadow/*"},
    {"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"], "Resource": "arn:aws:iot:us-east-1:123456789012:topic/$aws/things/${iot:Connection.Thing.ThingName}/jobs/*"},
    {"Effect": "Allow", "Action": ["iot:Subscribe", "iot:Receive"], "Resource": ["arn:aws:iot:us-east-1:123456789012:topicfilter/floors/${iot:Connection.Thing.Attributes[floor]}/#", "arn:aws:iot:us-east-1:123456789012:topic/floors/${iot:Connection.Thing.Attributes[floor]}/*"]},
    {"Effect": "Allow", "Action": "iot:Publish", "Resource": "arn:aws:iot:us-east-1:123456789012:topic/certs/${iot:Certificate.Subject.CommonName}/*"},
    {"Effect": "Deny", "Action": "iot:Publish", "Resource": "arn:aws:iot:us-east-1:123456789012:topic/fleet/${iot:Connection.Thing.ThingName}/telemetry/admin"},
    {"Effect": "Deny", "Action": "iot:*", "Resource": "arn:aws:iot:us-east-1:123456789012:topic/fleet/quarantine/*"}
  ]
}"#;

fn benches(c: &mut Criterion) {
    let policies = [Policy::parse(POLICY).expect("the bench policy parses")];
    let context = Context {
        client_id: "sensor-0042".into(),
        thing: Some(Thing {
            name: "sensor-0042".into(),
            type_name: Some("thermometer".into()),
            attributes: BTreeMap::from([("floor".to_owned(), "3".to_owned())]),
        }),
        ..Context::default()
    };
    let allowed = "arn:aws:iot:us-east-1:123456789012:topic/fleet/sensor-0042/telemetry";
    let other_device = "arn:aws:iot:us-east-1:123456789012:topic/fleet/sensor-0043/telemetry";
    let denied = "arn:aws:iot:us-east-1:123456789012:topic/fleet/sensor-0042/admin/reset";
    for (name, resource) in [
        ("evaluate publish allowed", allowed),
        ("evaluate publish implicit deny", other_device),
        ("evaluate publish explicit deny", denied),
    ] {
        let request = Request { action: Action::Publish, resource, context: &context };
        c.bench_function(name, |b| b.iter(|| evaluate(black_box(&policies), black_box(&request))));
    }
    c.bench_function("parse four-statement policy", |b| b.iter(|| Policy::parse(black_box(POLICY))));

    let ten = [Policy::parse(POLICY_10).expect("the ten-statement policy parses")];
    for (name, resource) in [
        (
            "ten statements: publish allowed",
            "arn:aws:iot:us-east-1:123456789012:topic/fleet/sensor-0042/telemetry/temp",
        ),
        (
            "ten statements: publish implicit deny",
            "arn:aws:iot:us-east-1:123456789012:topic/fleet/sensor-0043/telemetry/temp",
        ),
        (
            "ten statements: publish explicit deny",
            "arn:aws:iot:us-east-1:123456789012:topic/fleet/sensor-0042/telemetry/admin",
        ),
    ] {
        let request = Request { action: Action::Publish, resource, context: &context };
        c.bench_function(name, |b| b.iter(|| evaluate(black_box(&ten), black_box(&request))));
    }
}

criterion_group!(evaluate_benches, benches);
criterion_main!(evaluate_benches);
