//! flotilla-agent: the small process on every server of the fleet. It keeps one outbound,
//! authenticated websocket to the relay, reports heartbeats and Docker events, and runs the
//! relay's signed commands against the local Docker engine.
#![forbid(unsafe_code)]
