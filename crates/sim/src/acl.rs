//! Rule chains compiled for matching: addresses as integer prefixes, protocols as numbers,
//! jumps as chain indexes, and whether a chain (through its jumps) reads conntrack state.

use std::collections::HashMap;
use std::sync::Arc;

use ipnet::IpNet;
use nsdb::{Chain, Port, PortSelector, RuleAction};

use crate::error::SimError;
use crate::tag::Tag;
use crate::topology::Idx;

/// A compiled address condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NetC {
    V4(u32, u8),
    V6(u128, u8),
}

impl From<IpNet> for NetC {
    fn from(n: IpNet) -> NetC {
        match n {
            IpNet::V4(n) => NetC::V4(u32::from(n.network()), n.prefix_len()),
            IpNet::V6(n) => NetC::V6(u128::from(n.network()), n.prefix_len()),
        }
    }
}

/// A compiled rule action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ActC {
    Accept,
    Drop,
    Reject,
    Jump(Idx),
    Return,
    Continue,
}

/// A compiled conntrack condition: the packet's `ct_state & mask` must equal `value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CtC {
    pub mask: u32,
    pub value: u32,
}

/// The addresses of the pod ports a [`PortSelector`] picks, sorted for binary search.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct AddrSet {
    pub v4: Vec<u32>,
    pub v6: Vec<u128>,
}

impl AddrSet {
    fn of(sel: &PortSelector, ports: &[Port]) -> AddrSet {
        let mut s = AddrSet::default();
        for p in ports.iter().filter(|p| sel.matches_port(p)) {
            for a in &p.addresses {
                match a {
                    IpNet::V4(n) => s.v4.push(u32::from(n.addr())),
                    IpNet::V6(n) => s.v6.push(u128::from(n.addr())),
                }
            }
        }
        s.v4.sort_unstable();
        s.v4.dedup();
        s.v6.sort_unstable();
        s.v6.dedup();
        s
    }
}

#[derive(Debug, Clone)]
pub(crate) struct RuleC {
    pub id: String,
    pub src: Option<NetC>,
    pub dst: Option<NetC>,
    /// The source must be an address of a port the rule's `src_selector` picks.
    pub src_set: Option<Arc<AddrSet>>,
    /// The destination must be an address of a port the rule's `dst_selector` picks.
    pub dst_set: Option<Arc<AddrSet>>,
    /// The destination port must be the destination pod's container port of this name.
    pub dst_port_name: Option<String>,
    pub inv_src: bool,
    pub inv_dst: bool,
    pub proto: Option<u8>,
    pub src_ports: Option<(u16, u16)>,
    pub dst_ports: Option<(u16, u16)>,
    pub icmp_type: Option<u8>,
    pub icmp_code: Option<u8>,
    pub ct: Option<CtC>,
    pub action: ActC,
}

impl RuleC {
    /// True if the rule looks at anything above L2 (so non-IP packets never match it).
    pub fn needs_ip(&self) -> bool {
        self.src.is_some()
            || self.dst.is_some()
            || self.proto.is_some()
            || self.src_ports.is_some()
            || self.dst_ports.is_some()
            || self.icmp_type.is_some()
            || self.icmp_code.is_some()
            || self.src_set.is_some()
            || self.dst_set.is_some()
            || self.dst_port_name.is_some()
    }
}

#[derive(Debug, Clone)]
pub(crate) struct ChainC {
    pub id: String,
    pub tag: Tag,
    pub rules: Vec<RuleC>,
    pub default: ActC,
    /// The chain, or a chain it jumps to, matches on conntrack state.
    pub uses_ct: bool,
}

/// Compiles chains. A jump to a missing chain becomes a drop (and a problem is recorded):
/// failing closed is the safe reading of a rule that cannot be followed. Rule selectors
/// become the address sets of the `ports` they pick, computed once per distinct selector.
pub(crate) fn compile_chains<'a>(
    chains: &'a [Chain],
    ports: &[Port],
    problems: &mut Vec<SimError>,
) -> Vec<ChainC> {
    let mut sets: HashMap<&PortSelector, Arc<AddrSet>> = HashMap::new();
    let mut set = |sel: &'a Option<PortSelector>| -> Option<Arc<AddrSet>> {
        let sel = sel.as_ref()?;
        Some(
            sets.entry(sel)
                .or_insert_with(|| Arc::new(AddrSet::of(sel, ports)))
                .clone(),
        )
    };
    let idx: HashMap<&str, Idx> = chains
        .iter()
        .enumerate()
        .map(|(i, c)| (c.id.as_str(), i as Idx))
        .collect();
    let act = |owner: &str, a: &RuleAction, problems: &mut Vec<SimError>| match a {
        RuleAction::Accept => ActC::Accept,
        RuleAction::Drop => ActC::Drop,
        RuleAction::Reject => ActC::Reject,
        RuleAction::Return => ActC::Return,
        RuleAction::Continue => ActC::Continue,
        RuleAction::Jump(t) => match idx.get(t.as_str()) {
            Some(i) => ActC::Jump(*i),
            None => {
                problems.push(SimError::ChainMissing {
                    owner: owner.to_owned(),
                    chain: t.clone(),
                });
                ActC::Drop
            }
        },
    };
    let mut out: Vec<ChainC> = chains
        .iter()
        .map(|c| ChainC {
            id: c.id.clone(),
            tag: Tag::chain(&c.id),
            rules: c
                .rules
                .iter()
                .map(|r| RuleC {
                    id: r.id.clone(),
                    src: r.src.map(NetC::from),
                    dst: r.dst.map(NetC::from),
                    src_set: set(&r.src_selector),
                    dst_set: set(&r.dst_selector),
                    dst_port_name: r.dst_port_name.clone(),
                    inv_src: r.inv_src,
                    inv_dst: r.inv_dst,
                    proto: r.protocol.map(|p| p.number()),
                    src_ports: r.src_ports,
                    dst_ports: r.dst_ports,
                    icmp_type: r.icmp_type,
                    icmp_code: r.icmp_code,
                    ct: r.ct_state.and_then(|m| {
                        let mut c = CtC { mask: 0, value: 0 };
                        for (want, bit) in [
                            (m.new, crate::fields::ct::NEW),
                            (m.established, crate::fields::ct::ESTABLISHED),
                            (m.related, crate::fields::ct::RELATED),
                        ] {
                            if let Some(w) = want {
                                c.mask |= bit;
                                if w {
                                    c.value |= bit;
                                }
                            }
                        }
                        (c.mask != 0).then_some(c)
                    }),
                    action: act(&r.id, &r.action, problems),
                })
                .collect(),
            default: act(&c.id, &c.default_action, problems),
            uses_ct: false,
        })
        .collect();
    // uses_ct through jumps: iterate to a fixed point (bounded by the number of chains).
    let direct: Vec<bool> = out
        .iter()
        .map(|c| c.rules.iter().any(|r| r.ct.is_some()))
        .collect();
    let mut uses: Vec<bool> = direct;
    for _ in 0..out.len() {
        let mut changed = false;
        for (i, c) in out.iter().enumerate() {
            if uses[i] {
                continue;
            }
            let jumps = c
                .rules
                .iter()
                .map(|r| r.action)
                .chain(std::iter::once(c.default));
            if jumps
                .into_iter()
                .any(|a| matches!(a, ActC::Jump(t) if uses[t as usize]))
            {
                uses[i] = true;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    for (c, u) in out.iter_mut().zip(uses) {
        c.uses_ct = u;
    }
    out
}
