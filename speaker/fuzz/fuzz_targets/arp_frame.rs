//! Any bytes a raw socket can deliver: parse and respond must not panic, and a reply must be for an owned
//! address, unicast to the asker.
#![no_main]

use ferrolb_speaker::wire::Mac;
use ferrolb_speaker::wire::arp::{ArpFrame, Decision, respond};
use libfuzzer_sys::fuzz_target;
use std::net::Ipv4Addr;

const OURS: Mac = Mac([0x02, 0, 0, 0, 0, 0x01]);

fuzz_target!(|data: &[u8]| {
    let owned = Ipv4Addr::new(198, 19, 0, 1);
    if let Decision::Reply(reply) = respond(data, OURS, |ip| ip == owned) {
        let parsed = ArpFrame::parse(&reply).expect("our own reply parses");
        assert_eq!(parsed.spa, owned);
        assert!(!parsed.eth_dst.is_group());
    }
});
