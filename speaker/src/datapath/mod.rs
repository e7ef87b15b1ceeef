//! Everything that puts frames on the wire or reads the host: the [`announcer`] task and its raw-socket
//! [`responder`]s, solicited-node [`groups`], the [`claims`] the responders hear, the [`host`]'s interfaces and
//! sysctls, and [`netlink`] notifications. Decisions come from [`crate::model`] and [`crate::wire`].

pub mod announcer;
pub mod claims;
pub mod groups;
pub mod host;
pub mod netlink;
pub mod responder;
