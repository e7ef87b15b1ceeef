//! Hostile input: the ARP parser and responder never panic on arbitrary bytes, a reply is only ever sent for
//! an owned address to a unicast asker, and parse/serialise round-trip. (A coverage-guided `cargo fuzz`
//! target needs a nightly toolchain, which this machine cannot fetch; see the issue note.)

use ferrolb_speaker::wire::Mac;
use ferrolb_speaker::wire::arp::{ArpFrame, Decision, Operation, respond};
use proptest::prelude::*;
use std::net::Ipv4Addr;

const OURS: Mac = Mac([0x02, 0, 0, 0, 0, 0x01]);

fn arpish() -> impl Strategy<Value = Vec<u8>> {
    // Mostly well-formed ARP headers with random fields, plus plain random bytes of any length.
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..80),
        (proptest::collection::vec(any::<u8>(), 42..64), any::<bool>(), any::<bool>()).prop_map(
            |(mut b, bcast, req)| {
                b[12..22].copy_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, if req { 1 } else { 2 }]);
                if bcast {
                    b[0..6].copy_from_slice(&[0xff; 6]);
                }
                b
            }
        ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 20_000, ..ProptestConfig::default() })]
    #[test]
    fn never_panics_and_only_answers_owned_addresses(frame in arpish(), owned in any::<[u8; 4]>()) {
        let owned = Ipv4Addr::from(owned);
        match respond(&frame, OURS, |ip| ip == owned) {
            Decision::Reply(reply) => {
                let req = ArpFrame::parse(&frame).expect("a reply implies a parsable request");
                let rep = ArpFrame::parse(&reply).expect("our reply parses");
                prop_assert_eq!(req.operation, Operation::Request);
                prop_assert_eq!(req.tpa, owned);
                prop_assert_eq!((rep.spa, rep.sha, rep.eth_src), (owned, OURS, OURS));
                prop_assert_eq!((rep.eth_dst, rep.tha, rep.tpa), (req.sha, req.sha, req.spa));
                prop_assert!(!rep.eth_dst.is_group(), "never broadcast a reply");
            }
            Decision::Drop(_) => {}
        }
    }

    #[test]
    fn parse_and_serialise_round_trip(frame in arpish()) {
        if let Ok(parsed) = ArpFrame::parse(&frame) {
            prop_assert_eq!(&parsed.to_bytes()[..], &frame[..42]);
        }
    }
}
