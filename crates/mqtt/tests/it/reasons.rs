//! Reason codes: names, the MQTT 3.1.1 CONNACK mapping, and error messages.

use certfleet_mqtt::{Error, PacketType, QoS, ReasonCode};

#[test]
fn names() {
    let check = |code: ReasonCode, name: &str| assert_eq!(code.name(), Some(name), "{code:?}");
    check(ReasonCode::SUCCESS, "success");
    check(ReasonCode::NORMAL_DISCONNECTION, "success");
    check(ReasonCode::GRANTED_QOS_2, "granted qos 2");
    check(ReasonCode::DISCONNECT_WITH_WILL_MESSAGE, "disconnect with will message");
    check(ReasonCode::RE_AUTHENTICATE, "re-authenticate");
    check(ReasonCode::MALFORMED_PACKET, "malformed packet");
    check(ReasonCode::TOPIC_ALIAS_INVALID, "topic alias invalid");
    check(ReasonCode::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED, "wildcard subscriptions not supported");
    assert_eq!(ReasonCode::new(0x03).name(), None);
    assert_eq!(ReasonCode::new(0xA3).name(), None);
    let defined = (0..=255u8).filter(|code| ReasonCode::new(*code).name().is_some()).count();
    assert_eq!(defined, 43);
    assert_eq!(ReasonCode::NOT_AUTHORIZED.to_string(), "not authorized (0x87)");
    assert_eq!(format!("{:?}", ReasonCode::BANNED), "ReasonCode(0x8a banned)");
    assert!(ReasonCode::UNSPECIFIED_ERROR.is_error() && !ReasonCode::NO_MATCHING_SUBSCRIBERS.is_error());
    assert_eq!(ReasonCode::granted(QoS::AtLeastOnce), ReasonCode::GRANTED_QOS_1);
    assert_eq!(ReasonCode::default(), ReasonCode::SUCCESS);
}

#[test]
fn v311_connack_return_codes() {
    for return_code in 0..=255u8 {
        let reason_code = ReasonCode::from_v311_connack(return_code);
        assert_eq!(reason_code.is_some(), return_code <= 5);
        if let Some(reason_code) = reason_code {
            assert_eq!(reason_code.to_v311_connack(), Some(return_code));
        }
    }
    assert_eq!(ReasonCode::BANNED.to_v311_connack(), None);
    assert_eq!(ReasonCode::SERVER_BUSY.to_v311_connack(), None);
}

#[test]
fn error_messages() {
    let check = |error: Error, message: &str| assert_eq!(error.to_string(), message);
    check(Error::PacketTooLarge { size: 2000, max: 1024 }, "packet of 2000 bytes exceeds the maximum of 1024 bytes");
    check(Error::InvalidFlags { packet_type: PacketType::PingReq, flags: 1 }, "invalid flags 0b0001 for pingreq");
    check(Error::DuplicateProperty(0x21), "duplicate property receive maximum");
    check(
        Error::PropertyNotAllowed { property: 0x11, packet: "publish" },
        "property session expiry interval is not allowed on publish",
    );
    check(Error::InvalidPropertyValue(0x23), "invalid value for property topic alias");
    check(Error::UnknownProperty(0x05), "unknown property identifier 0x05");
    check(Error::NotInVersion("auth"), "auth cannot be sent over mqtt 3.1.1");
}
