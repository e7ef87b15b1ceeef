//! kubectl-ferrolb: answers "which node announces this address?", "why has my Service no address (or no
//! answer)?" and "how full are my pools?" from the API objects ferrolb reads and writes.
//!
//! The answers to `why` come from the controller's and the speaker's own pure functions
//! (`ferrolb_controller::replay`, `ferrolb_speaker::model::plan`), run here over the objects read from the API, so the
//! text is the one their Warning Events carry (docs/design.md §7.5). [`model`] holds the plain inputs, [`status`],
//! [`pools`] and [`why`] decide and format (pure), [`cluster`] reads the API (thin I/O).

pub mod cluster;
pub mod error;
pub mod model;
pub mod pools;
pub mod status;
pub mod table;
pub mod why;

pub use error::Error;
