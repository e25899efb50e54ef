//! The MQTT session layer and broker, driven through `serve` over in-memory streams by a small
//! client on the shared codec. Time is paused: keep-alive, expiry and will delays advance only
//! when every task waits.

mod bounds;
mod cluster;
mod connect;
mod delivery;
mod events;
mod harness;
mod limits;
mod rules;
mod security;
mod sessions;
mod v5;
