//! The console's read models: the fleet overview's counts and timeline, the certificate search
//! by CN, the subject backfill and the expiring counts, against a real registry.

use certfleet_registry::{
    CertificateSearch, CertificateStatus, RotationSource, RotationState, SearchAfter, SubjectRule,
};
use certfleet_services::{Caller, Services};
use certfleet_testkit::world;

fn csr(common_name: &str) -> String {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
    params.serialize_request(&key).unwrap().pem().unwrap()
}

fn device(services: &Services, caller: &Caller, common_name: &str) -> certfleet_pki::CertificateId {
    services.create_certificate_from_csr(caller, &csr(common_name), true).unwrap().id
}

fn names(services: &Services, caller: &Caller, search: CertificateSearch) -> (Vec<String>, Option<SearchAfter>) {
    let (rows, next) = services.search_certificates(caller, &search).unwrap();
    (rows.into_iter().map(|row| row.subject_cn.unwrap_or_default()).collect(), next)
}

#[test]
fn the_overview_counts_what_the_registry_holds_for_the_caller_only() {
    let world = world();
    let (services, caller, other) = (&world.services, world.caller(), world.caller());
    let old_a = device(services, &caller, "sensor-a");
    device(services, &caller, "sensor-b");
    let revoked = device(services, &caller, "sensor-c");
    services.update_certificate(&caller, &revoked, CertificateStatus::Revoked).unwrap();
    device(services, &other, "sensor-x");
    world.clock.advance(time::Duration::days(340));
    device(services, &caller, "pump-1");

    let overview = services.fleet_overview(&caller).unwrap();
    assert_eq!(overview.total, 4);
    assert_eq!(overview.by_status.get("ACTIVE"), Some(&3));
    assert_eq!(overview.by_status.get("REVOKED"), Some(&1));
    // 365-day certificates made 340 days ago expire in 25 days: within 30 and 90, not 7.
    assert_eq!(overview.expiring, [0, 2, 2]);
    assert_eq!(overview.expired_active, 0);
    let series = &overview.timeline[0];
    assert_eq!(series.ca, None, "certfleet's own issuer is no CA of the account");
    assert_eq!(series.weeks[3], 2, "25 days from now is the fourth week");
    assert_eq!(series.later, 1, "365 days is past the 52 weeks shown");
    assert_eq!(series.total(), 3, "ACTIVE only");
    let of_issuer = &overview.by_ca[&None];
    assert_eq!((of_issuer.total(), of_issuer.by_status["REVOKED"], of_issuer.expiring), (4, 1, [0, 2, 2]));

    let (found, _) = names(
        services,
        &caller,
        CertificateSearch { cn_prefix: Some("sensor-".into()), limit: 10, ..Default::default() },
    );
    assert_eq!(found, ["sensor-a", "sensor-b", "sensor-c"]);
    let (found, next) = names(
        services,
        &caller,
        CertificateSearch { cn_prefix: Some("sensor-".into()), limit: 2, ..Default::default() },
    );
    assert_eq!(found, ["sensor-a", "sensor-b"]);
    let (found, next) = names(
        services,
        &caller,
        CertificateSearch { cn_prefix: Some("sensor-".into()), limit: 2, after: next, ..Default::default() },
    );
    assert_eq!((found, next), (vec!["sensor-c".to_owned()], None));
    let (found, _) = names(
        services,
        &caller,
        CertificateSearch { cn_prefix: Some("Sensor".into()), limit: 10, ..Default::default() },
    );
    assert!(found.is_empty(), "case-sensitive");
    let (found, _) = names(
        services,
        &other,
        CertificateSearch { cn_prefix: Some("sensor-".into()), limit: 10, ..Default::default() },
    );
    assert_eq!(found, ["sensor-x"]);
    let prefix = old_a.as_str()[..10].to_owned();
    let (rows, _) = services
        .search_certificates(&caller, &CertificateSearch { id_prefix: Some(prefix), limit: 10, ..Default::default() })
        .unwrap();
    assert_eq!(rows.iter().map(|row| &row.id).collect::<Vec<_>>(), vec![&old_a]);

    let expiring = services.expiring_certificates().unwrap();
    assert_eq!(expiring.len(), 2, "one group per account with certificates expiring: {expiring:?}");
    let mine = expiring.iter().find(|count| count.account == caller.account).unwrap();
    assert_eq!(mine.within, [0, 2, 2]);
    let theirs = expiring.iter().find(|count| count.account == other.account).unwrap();
    assert_eq!(theirs.within, [0, 1, 1]);

    assert_eq!(services.fill_subject_names(100).unwrap(), 0, "new rows carry their CN already");
    assert!(services.open_rotation_campaigns(&caller, 10).unwrap().is_empty());
    assert!(services.certificate_rotations(&caller, &old_a, 10).unwrap().is_empty());
    assert!(services.rotation_campaigns(&caller, 10).unwrap().is_empty());

    // A certificate never seen connected: its rotation fails at once ("no client id known").
    let started = services
        .start_rotation(&caller, std::slice::from_ref(&old_a), RotationSource::Manual, SubjectRule::KeepOld)
        .unwrap();
    let campaigns = services.rotation_campaigns(&caller, 10).unwrap();
    assert_eq!(campaigns.len(), 1);
    assert_eq!(campaigns[0].campaign.id, started.campaign.id);
    assert_eq!(campaigns[0].counts.get(&RotationState::Failed), Some(&1));
    let gauges = services.rotation_counts().unwrap();
    assert_eq!(gauges.len(), 1, "only the caller's account has rotations");
    assert_eq!((&gauges[0].0, gauges[0].1.get(&RotationState::Failed)), (&caller.account, Some(&1)));
    assert!(services.open_rotation_campaigns(&caller, 10).unwrap().is_empty(), "nothing open");
    let rotations = services.certificate_rotations(&caller, &old_a, 10).unwrap();
    assert_eq!(rotations.len(), 1);
    assert!(services.rotation_campaigns(&other, 10).unwrap().is_empty());
    assert!(services.certificate_rotations(&other, &old_a, 10).unwrap().is_empty());
}
