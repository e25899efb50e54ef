//! certfleet's device gateway: MQTT 3.1.1 and 5 over mutual TLS, each device authenticated by
//! its X.509 certificate against the registry of the account its SNI names.

pub mod identity;
