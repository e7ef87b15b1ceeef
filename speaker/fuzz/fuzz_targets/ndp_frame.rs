//! Any bytes a raw socket can deliver: NDP parse and respond must not panic, and an answer must be a valid
//! advertisement for the owned address, from our MAC.
#![no_main]

use ferrolb_speaker::wire::Mac;
use ferrolb_speaker::wire::ndp::{Decision, NdpFrame, respond};
use libfuzzer_sys::fuzz_target;
use std::net::Ipv6Addr;

const OURS: Mac = Mac([0x02, 0, 0, 0, 0, 0x01]);

fuzz_target!(|data: &[u8]| {
    let owned = Ipv6Addr::new(0x2001, 0xdb8, 0x1, 0, 0, 0, 0, 0x10);
    if let Decision::Reply(reply) = respond(data, OURS, |ip| ip == owned) {
        let parsed = NdpFrame::parse(&reply).expect("our own answer validates");
        assert_eq!((parsed.target, parsed.eth_src), (owned, OURS));
    }
});
