//! A datapath flow (key, mask, actions, UFID, stats) and its `ovs-dpctl dump-flows` text.

use std::fmt;
use std::time::Duration;

use crate::action::Action;
use crate::key::{FlowKey, FlowMask};

/// Statistics of a flow as `ovs-dpctl dump-flows` shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FlowStats {
    /// Packets matched.
    pub packets: u64,
    /// Bytes matched.
    pub bytes: u64,
    /// Time since the flow last matched a packet; `None` = never.
    pub used: Option<Duration>,
    /// TCP flags seen (OR of all packets), 0 when none.
    pub tcp_flags: u16,
}

impl FlowStats {
    /// Stats from the kernel's values: `used_ms` is `OVS_FLOW_ATTR_USED` (monotonic ms) and
    /// `now_ms` the caller's current monotonic time in ms.
    pub fn from_kernel(
        packets: u64,
        bytes: u64,
        used_ms: Option<u64>,
        now_ms: u64,
        tcp_flags: u8,
    ) -> Self {
        FlowStats {
            packets,
            bytes,
            used: used_ms
                .filter(|&u| u != 0)
                .map(|u| Duration::from_millis(now_ms.saturating_sub(u))),
            tcp_flags: u16::from(tcp_flags),
        }
    }
}

/// A datapath flow.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Flow {
    /// The match key.
    pub key: FlowKey,
    /// The mask (empty = exact match of every key attribute).
    pub mask: FlowMask,
    /// Actions; empty = drop.
    pub actions: Vec<Action>,
    /// Unique flow id (`OVS_FLOW_ATTR_UFID`), printed as a UUID.
    pub ufid: Option<u128>,
    /// Statistics.
    pub stats: FlowStats,
}

impl Flow {
    /// The key and mask alone, in `ovs-dpctl` syntax (`in_port(1),eth(),...`).
    pub fn match_text(&self) -> String {
        let mut s = String::new();
        crate::text::format_key(&mut s, &self.key, &self.mask);
        s
    }

    /// The actions alone, in `ovs-dpctl` syntax (`1,ct(commit),recirc(0x1)` or `drop`).
    pub fn actions_text(&self) -> String {
        let mut s = String::new();
        crate::text::format_actions(&mut s, &self.actions);
        s
    }
}

/// `ovs-dpctl dump-flows` text: `<match>, packets:N, bytes:N, used:never, actions:<actions>`.
/// The alternate form (`{:#}`) starts with `ufid:<uuid>, ` when a UFID is set, as
/// `ovs-dpctl dump-flows -m` does.
impl fmt::Display for Flow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::with_capacity(256);
        if f.alternate()
            && let Some(u) = self.ufid
        {
            crate::text::format_ufid(&mut s, u);
            s.push_str(", ");
        }
        crate::text::format_key(&mut s, &self.key, &self.mask);
        s.push_str(", ");
        crate::text::format_stats(&mut s, &self.stats);
        s.push_str(", actions:");
        crate::text::format_actions(&mut s, &self.actions);
        f.write_str(&s)
    }
}

/// Displays a list of actions in `ovs-dpctl` syntax.
#[derive(Debug, Clone, Copy)]
pub struct ActionsDisplay<'a>(pub &'a [Action]);

impl fmt::Display for ActionsDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::new();
        crate::text::format_actions(&mut s, self.0);
        f.write_str(&s)
    }
}

/// Displays a key with its mask in `ovs-dpctl` syntax.
#[derive(Debug, Clone, Copy)]
pub struct MatchDisplay<'a>(pub &'a FlowKey, pub &'a FlowMask);

impl fmt::Display for MatchDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::new();
        crate::text::format_key(&mut s, self.0, self.1);
        f.write_str(&s)
    }
}
