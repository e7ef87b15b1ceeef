//! ferrolb-speaker: elects one owner node per address and answers ARP for it. Not built yet (issue 5).
