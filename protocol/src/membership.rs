//! Who belongs to a mesh and what each member may write: signed membership operations,
//! replicated like any entry, folded into one [`Membership`] that every node computes alike.
//!
//! # The rules
//!
//! - The mesh starts from its owner's key (the mesh id is its hash). The owner is always a
//!   member, always `owner`, and can be neither revoked nor demoted.
//! - An operation counts only if its author held `owner` or `admin` at the operation's position
//!   in its own log, and was not revoked before that position.
//! - Roles and revocations are positions in the *target's* log: `Add` gives a role from its seq
//!   1, `ChangeRole` from `from_seq`, `Revoke` keeps its entries up to `last_seq` and refuses the
//!   rest. Entries are therefore judged by where they stand in their author's log, never by when
//!   they happened to arrive.
//! - A revoked device stays revoked: adding it again is void (a returning device pairs again,
//!   with a new key).
//!
//! # Convergence: the same operations give the same membership, in any arrival order
//!
//! [`Membership::compute`] is a pure function of the *set* of operations held. It evaluates
//! them in seniority order: the owner's first, then those of devices the owner added, then
//! those of devices they added, and so on (ties by device id, then seq), each against the
//! membership built so far. Then every counted operation whose author turns out revoked at or
//! before that operation's position is struck out and the evaluation runs again, until nothing
//! changes (at most once per operation; there are tens of them).
//!
//! The consequence for two admins who revoke each other while apart: the more senior one
//! (closer to the owner; at equal depth, the lower device id) is evaluated first, so its
//! revocation counts and the other's, written after its own cutoff, is struck out. The same
//! holds for a stolen admin device revoked by a junior admin: its later operations are struck
//! out, because they sit after its cutoff. Only when the stolen device is the *more* senior of
//! the two can it win a mutual revocation; the owner, who outranks everyone, settles that.

use std::collections::{BTreeMap, BTreeSet};

use crate::ids::DeviceId;
use crate::schema::DocType;

/// What a member may do. Stable codes: they are part of the entry encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Owner,
    Admin,
    Manager,
    Till,
    Bridge,
    Viewer,
}

impl Role {
    pub const ALL: [Role; 6] = [
        Role::Owner,
        Role::Admin,
        Role::Manager,
        Role::Till,
        Role::Bridge,
        Role::Viewer,
    ];

    pub fn code(self) -> u8 {
        match self {
            Role::Owner => 1,
            Role::Admin => 2,
            Role::Manager => 3,
            Role::Till => 4,
            Role::Bridge => 5,
            Role::Viewer => 6,
        }
    }

    pub fn from_code(code: u8) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.code() == code)
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Manager => "manager",
            Role::Till => "till",
            Role::Bridge => "bridge",
            Role::Viewer => "viewer",
        }
    }

    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == name)
    }

    /// Owners and admins add, change and revoke members.
    pub fn manages_members(self) -> bool {
        matches!(self, Role::Owner | Role::Admin)
    }

    /// Whether this role may write documents of `doc_type` (their fields outside `ledger`).
    ///
    /// A till sells, refunds, takes customers, counts stock and passes stock rights; managers and admins run the
    /// shop; the bridge writes what QuickBooks holds (customers, vendors, invoices, payments,
    /// expenses, products) but never the mesh settings; a viewer writes nothing.
    pub fn may_write(self, doc_type: DocType) -> bool {
        match self {
            Role::Owner | Role::Admin | Role::Manager => true,
            Role::Till => matches!(
                doc_type,
                DocType::Sale
                    | DocType::Refund
                    | DocType::Customer
                    | DocType::StockAdjustment
                    | DocType::StockTransfer
            ),
            Role::Bridge => doc_type != DocType::Settings,
            Role::Viewer => false,
        }
    }

    /// Only the bridge writes the `ledger` part of documents: what QuickBooks says.
    pub fn may_write_ledger(self) -> bool {
        self == Role::Bridge
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Longest device name a membership operation carries, in bytes.
pub const MEMBER_NAME_BYTES_MAX: usize = 64;

/// A change to the membership, signed by an owner or admin as the payload of an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberOp {
    /// Admits `device` with `role` from its first entry.
    Add {
        device: DeviceId,
        role: Role,
        name: String,
    },
    /// Gives `device` a new role for its entries from `from_seq` on.
    ChangeRole {
        device: DeviceId,
        role: Role,
        from_seq: u64,
    },
    /// Keeps `device`'s entries up to `last_seq`; refuses every later one.
    Revoke { device: DeviceId, last_seq: u64 },
}

impl MemberOp {
    pub fn device(&self) -> DeviceId {
        match self {
            MemberOp::Add { device, .. }
            | MemberOp::ChangeRole { device, .. }
            | MemberOp::Revoke { device, .. } => *device,
        }
    }
}

/// A membership operation and where it sits: `(author, seq)` of the entry that carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpRecord {
    pub author: DeviceId,
    pub seq: u64,
    pub op: MemberOp,
}

/// Why an operation or an entry is not allowed. The text is what people read in
/// `tillmesh rejected`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    #[error("device {0} is not a member of this mesh (or its admission has not arrived here yet)")]
    NotMember(DeviceId),
    #[error("device {device} was revoked: entries after its entry {last_seq} are refused")]
    Revoked { device: DeviceId, last_seq: u64 },
    #[error("device {device} is a {role}: a {role} may not write {doc_type} documents")]
    DocType {
        device: DeviceId,
        role: Role,
        doc_type: DocType,
    },
    #[error(
        "device {device} is a {role}: only the bridge writes the ledger part of a document (what QuickBooks holds)"
    )]
    Ledger { device: DeviceId, role: Role },
    #[error("device {device} is a {role}: only an owner or admin changes the membership")]
    NotAdmin { device: DeviceId, role: Role },
    #[error("the owner of a mesh can be neither revoked nor given another role")]
    Owner,
    #[error("a mesh has exactly one owner: role owner can't be given")]
    SecondOwner,
    #[error("device {0} is already a member")]
    AlreadyMember(DeviceId),
    #[error("device {0} was revoked and can't be admitted again; pair it again with a new key")]
    Readmit(DeviceId),
}

/// What the membership says of one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    /// Its roles by the seq of its own log they start at, ascending.
    pub roles: Vec<(u64, Role)>,
    /// Set once revoked: the last of its entries that is accepted.
    pub last_seq: Option<u64>,
    /// Distance from the owner in the chain of admissions: seniority.
    pub depth: u32,
    pub added_by: Option<DeviceId>,
    /// Proven here to have forked its log: this node accepts nothing more of it and lets it
    /// no longer connect. Local knowledge, not part of what the operations define.
    pub quarantined: bool,
}

impl Member {
    /// The role its entry `seq` is judged under.
    pub fn role_at(&self, seq: u64) -> Role {
        self.roles
            .iter()
            .rev()
            .find(|(from, _)| *from <= seq)
            .or(self.roles.first())
            .map(|(_, r)| *r)
            .unwrap_or(Role::Viewer)
    }

    /// Its role now: for its next entries.
    pub fn current_role(&self) -> Role {
        self.roles.last().map(|(_, r)| *r).unwrap_or(Role::Viewer)
    }

    pub fn revoked_at(&self, seq: u64) -> bool {
        self.last_seq.is_some_and(|last| seq > last)
    }
}

/// The members of one mesh, as the operations held define them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    owner: DeviceId,
    members: BTreeMap<DeviceId, Member>,
}

impl Membership {
    /// A mesh with only its owner.
    pub fn new(owner: DeviceId) -> Membership {
        let mut members = BTreeMap::new();
        members.insert(
            owner,
            Member {
                name: String::new(),
                roles: vec![(1, Role::Owner)],
                last_seq: None,
                depth: 0,
                added_by: None,
                quarantined: false,
            },
        );
        Membership { owner, members }
    }

    /// The membership the operations `ops` define, whatever their order (see the module docs).
    pub fn compute(owner: DeviceId, ops: &[OpRecord]) -> Membership {
        let mut struck: BTreeSet<(DeviceId, u64)> = BTreeSet::new();
        loop {
            let (state, counted) = Membership::evaluate(owner, ops, &struck);
            let void: Vec<(DeviceId, u64)> = counted
                .into_iter()
                .filter(|(author, seq)| {
                    state
                        .members
                        .get(author)
                        .is_some_and(|m| m.revoked_at(*seq))
                })
                .collect();
            if void.is_empty() {
                return state;
            }
            struck.extend(void);
        }
    }

    /// One pass in seniority order; returns the state and the operations that counted.
    fn evaluate(
        owner: DeviceId,
        ops: &[OpRecord],
        struck: &BTreeSet<(DeviceId, u64)>,
    ) -> (Membership, Vec<(DeviceId, u64)>) {
        let mut state = Membership::new(owner);
        let mut pending: Vec<&OpRecord> = ops
            .iter()
            .filter(|o| !struck.contains(&(o.author, o.seq)))
            .collect();
        pending.sort_by_key(|o| (o.author, o.seq));
        pending.dedup_by_key(|o| (o.author, o.seq));
        let mut counted = Vec::new();
        loop {
            // The most senior operation that applies now: by its author's seniority, then id,
            // then seq. Authors not admitted yet wait, and so does an operation on a device
            // not admitted yet, or by an author not an admin yet: a later operation may admit
            // or promote them. Operations that can never apply are dropped.
            let mut order: Vec<(u32, DeviceId, u64, usize)> = pending
                .iter()
                .enumerate()
                .filter_map(|(i, o)| {
                    let m = state.members.get(&o.author)?;
                    Some((m.depth, o.author, o.seq, i))
                })
                .collect();
            order.sort();
            let mut applied = None;
            let mut dropped = Vec::new();
            for (_, author, seq, i) in order {
                match state.check_op(author, seq, &pending[i].op) {
                    Ok(()) => {
                        applied = Some(i);
                        break;
                    }
                    Err(AccessError::NotMember(d)) if d != author => {}
                    Err(AccessError::NotAdmin { .. }) => {}
                    Err(_) => dropped.push(i),
                }
            }
            if let Some(i) = applied {
                let op = pending[i];
                state.apply(op).expect("checked just now");
                counted.push((op.author, op.seq));
                dropped.push(i);
            }
            let progressed = applied.is_some();
            dropped.sort_unstable();
            for i in dropped.into_iter().rev() {
                pending.remove(i);
            }
            if !progressed {
                break;
            }
        }
        (state, counted)
    }

    /// Checks `op` by `author` at `seq` against this membership and applies it.
    pub fn apply(&mut self, op: &OpRecord) -> Result<(), AccessError> {
        self.check_op(op.author, op.seq, &op.op)?;
        let depth = self.members[&op.author].depth + 1;
        match &op.op {
            MemberOp::Add { device, role, name } => {
                self.members.insert(
                    *device,
                    Member {
                        name: name.clone(),
                        roles: vec![(1, *role)],
                        last_seq: None,
                        depth,
                        added_by: Some(op.author),
                        quarantined: false,
                    },
                );
            }
            MemberOp::ChangeRole {
                device,
                role,
                from_seq,
            } => {
                let m = self.members.get_mut(device).expect("checked");
                let at = m.roles.partition_point(|(from, _)| from <= from_seq);
                // The same start twice: the later evaluated wins, as every node evaluates alike.
                if at > 0 && m.roles[at - 1].0 == *from_seq {
                    m.roles[at - 1].1 = *role;
                } else {
                    m.roles.insert(at, (*from_seq, *role));
                }
            }
            MemberOp::Revoke { device, last_seq } => {
                let m = self.members.get_mut(device).expect("checked");
                m.last_seq = Some(m.last_seq.map_or(*last_seq, |l| l.min(*last_seq)));
            }
        }
        Ok(())
    }

    /// Whether `author`, at its entry `seq`, may make `op`.
    pub fn check_op(&self, author: DeviceId, seq: u64, op: &MemberOp) -> Result<(), AccessError> {
        let role = self.role_at(author, seq)?;
        if !role.manages_members() {
            return Err(AccessError::NotAdmin {
                device: author,
                role,
            });
        }
        let device = op.device();
        match op {
            MemberOp::Add { role, .. } => {
                if *role == Role::Owner {
                    return Err(AccessError::SecondOwner);
                }
                match self.members.get(&device) {
                    Some(m) if m.last_seq.is_some() => Err(AccessError::Readmit(device)),
                    Some(_) => Err(AccessError::AlreadyMember(device)),
                    None => Ok(()),
                }
            }
            MemberOp::ChangeRole { role, .. } => {
                if device == self.owner {
                    return Err(AccessError::Owner);
                }
                if *role == Role::Owner {
                    return Err(AccessError::SecondOwner);
                }
                self.members
                    .get(&device)
                    .map(drop)
                    .ok_or(AccessError::NotMember(device))
            }
            MemberOp::Revoke { .. } => {
                if device == self.owner {
                    return Err(AccessError::Owner);
                }
                self.members
                    .get(&device)
                    .map(drop)
                    .ok_or(AccessError::NotMember(device))
            }
        }
    }

    /// What can be said of an operation whatever other operations arrive later: its author is
    /// admitted and (revocations aside) manages members at `seq`, and it neither names the
    /// owner nor makes a second one. An operation that passes is kept, and [`Membership::compute`]
    /// decides whether it counts; so every node keeps the same operations whatever their
    /// arrival order. `NotMember` and `NotAdmin` depend on other operations (an admission not
    /// held yet; a role change that another node may not hold yet): a node waits for the
    /// first, and keeps an operation despite the second, which `compute` then never counts
    /// while its author is not an admin there.
    pub fn admissible_op(
        &self,
        author: DeviceId,
        seq: u64,
        op: &MemberOp,
    ) -> Result<(), AccessError> {
        let m = self
            .members
            .get(&author)
            .ok_or(AccessError::NotMember(author))?;
        let role = m.role_at(seq);
        if !role.manages_members() {
            return Err(AccessError::NotAdmin {
                device: author,
                role,
            });
        }
        match op {
            MemberOp::Add { role, .. } | MemberOp::ChangeRole { role, .. }
                if *role == Role::Owner =>
            {
                Err(AccessError::SecondOwner)
            }
            MemberOp::ChangeRole { device, .. } | MemberOp::Revoke { device, .. }
                if *device == self.owner =>
            {
                Err(AccessError::Owner)
            }
            _ => Ok(()),
        }
    }

    /// The role `device`'s entry `seq` is judged under, if it is admitted and not revoked there.
    pub fn role_at(&self, device: DeviceId, seq: u64) -> Result<Role, AccessError> {
        let m = self
            .members
            .get(&device)
            .ok_or(AccessError::NotMember(device))?;
        if let Some(last_seq) = m.last_seq.filter(|last| seq > *last) {
            return Err(AccessError::Revoked { device, last_seq });
        }
        Ok(m.role_at(seq))
    }

    /// Whether `device`'s entry `seq` may write documents of `doc_type`, and their ledger part
    /// if `touches_ledger`.
    pub fn check_write(
        &self,
        device: DeviceId,
        seq: u64,
        doc_type: DocType,
        touches_ledger: bool,
    ) -> Result<(), AccessError> {
        let role = self.role_at(device, seq)?;
        if !role.may_write(doc_type) {
            return Err(AccessError::DocType {
                device,
                role,
                doc_type,
            });
        }
        if touches_ledger && !role.may_write_ledger() {
            return Err(AccessError::Ledger { device, role });
        }
        Ok(())
    }

    /// Whether `device` may connect and sync: admitted, not revoked, not quarantined here.
    pub fn is_active(&self, device: &DeviceId) -> bool {
        self.members
            .get(device)
            .is_some_and(|m| m.last_seq.is_none() && !m.quarantined)
    }

    /// Marks devices this node caught forking their log (see [`Member::quarantined`]).
    pub fn quarantine<'a>(&mut self, devices: impl IntoIterator<Item = &'a DeviceId>) {
        for d in devices {
            if let Some(m) = self.members.get_mut(d) {
                m.quarantined = true;
            }
        }
    }

    pub fn owner(&self) -> DeviceId {
        self.owner
    }

    pub fn get(&self, device: &DeviceId) -> Option<&Member> {
        self.members.get(device)
    }

    pub fn members(&self) -> impl Iterator<Item = (&DeviceId, &Member)> {
        self.members.iter()
    }

    /// Finds members by exact name or by id (full, or the start of its text form). A text
    /// that matches both ways returns them all, so a device named like another's id is never
    /// picked by mistake: the caller asks for more of the id.
    pub fn find(&self, what: &str) -> Vec<DeviceId> {
        let mut found: Vec<DeviceId> = self
            .members
            .iter()
            .filter(|(id, m)| {
                m.name == what || (!what.is_empty() && id.to_string().starts_with(what))
            })
            .map(|(id, _)| *id)
            .collect();
        found.dedup();
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::DeviceKey;
    use proptest::prelude::*;

    fn dev(n: u8) -> DeviceId {
        DeviceKey::from_secret([n; 32]).device_id()
    }

    fn add(author: DeviceId, seq: u64, device: DeviceId, role: Role) -> OpRecord {
        OpRecord {
            author,
            seq,
            op: MemberOp::Add {
                device,
                role,
                name: format!("d{seq}"),
            },
        }
    }

    fn revoke(author: DeviceId, seq: u64, device: DeviceId, last_seq: u64) -> OpRecord {
        OpRecord {
            author,
            seq,
            op: MemberOp::Revoke { device, last_seq },
        }
    }

    #[test]
    fn roles_follow_the_target_log() {
        let (owner, till) = (dev(1), dev(2));
        let ops = vec![
            add(owner, 2, till, Role::Till),
            OpRecord {
                author: owner,
                seq: 3,
                op: MemberOp::ChangeRole {
                    device: till,
                    role: Role::Viewer,
                    from_seq: 10,
                },
            },
        ];
        let m = Membership::compute(owner, &ops);
        assert_eq!(m.role_at(till, 9), Ok(Role::Till));
        assert_eq!(m.role_at(till, 10), Ok(Role::Viewer));
        assert!(m.check_write(till, 5, DocType::Sale, false).is_ok());
        assert!(matches!(
            m.check_write(till, 5, DocType::Product, false),
            Err(AccessError::DocType { .. })
        ));
        assert!(matches!(
            m.check_write(till, 5, DocType::Sale, true),
            Err(AccessError::Ledger { .. })
        ));
        assert!(matches!(
            m.check_write(till, 11, DocType::Sale, false),
            Err(AccessError::DocType { .. })
        ));
        assert_eq!(m.role_at(dev(9), 1), Err(AccessError::NotMember(dev(9))));
    }

    #[test]
    fn only_admins_manage_and_the_owner_stays() {
        let (owner, till, admin, x) = (dev(1), dev(2), dev(3), dev(4));
        let mut m = Membership::new(owner);
        m.apply(&add(owner, 1, till, Role::Till)).unwrap();
        m.apply(&add(owner, 2, admin, Role::Admin)).unwrap();
        assert!(matches!(
            m.apply(&add(till, 1, x, Role::Till)),
            Err(AccessError::NotAdmin { .. })
        ));
        assert_eq!(
            m.apply(&revoke(admin, 1, owner, 0)),
            Err(AccessError::Owner)
        );
        assert_eq!(
            m.apply(&add(admin, 2, x, Role::Owner)),
            Err(AccessError::SecondOwner)
        );
        m.apply(&revoke(admin, 3, till, 7)).unwrap();
        assert_eq!(m.role_at(till, 7), Ok(Role::Till));
        assert_eq!(
            m.role_at(till, 8),
            Err(AccessError::Revoked {
                device: till,
                last_seq: 7
            })
        );
        assert_eq!(
            m.apply(&add(admin, 4, till, Role::Till)),
            Err(AccessError::Readmit(till))
        );
        assert!(!m.is_active(&till));
    }

    #[test]
    fn mutual_revocation_the_senior_admin_wins() {
        // The owner adds A, then A adds B as admin: A is more senior. Apart, each revokes the
        // other, keeping what it had seen of it.
        let (owner, a, b) = (dev(1), dev(2), dev(3));
        let ops = vec![
            add(owner, 2, a, Role::Admin),
            add(a, 1, b, Role::Admin),
            revoke(a, 2, b, 0),
            revoke(b, 1, a, 1),
        ];
        let m = Membership::compute(owner, &ops);
        assert!(m.is_active(&a));
        assert!(!m.is_active(&b));
        // B's revocation sits after its own cutoff (0): struck out.
        assert_eq!(m.role_at(a, 5), Ok(Role::Admin));
    }

    #[test]
    fn a_revoked_admin_later_operations_are_void_whoever_revoked_it() {
        // B (senior) is revoked by C (junior) keeping B's first entry; B, stolen, later adds
        // a device and revokes the till D. Everything B did after its cutoff is void.
        let (owner, b, c, intruder, d) = (dev(1), dev(2), dev(3), dev(4), dev(5));
        let ops = vec![
            add(owner, 2, b, Role::Admin),
            add(owner, 3, d, Role::Till),
            add(b, 1, c, Role::Admin),
            revoke(c, 1, b, 1),
            add(b, 2, intruder, Role::Admin),
            revoke(b, 3, d, 0),
        ];
        let m = Membership::compute(owner, &ops);
        assert!(!m.is_active(&b));
        assert!(m.is_active(&c), "{m:?}");
        assert!(m.is_active(&d), "{m:?}");
        assert!(m.get(&intruder).is_none());
    }

    #[test]
    fn operations_wait_for_the_devices_they_name() {
        // The owner revokes a till that an admin added; the owner's operations are evaluated
        // first, yet the revocation must still hold.
        let (owner, admin, till) = (dev(1), dev(2), dev(3));
        let ops = vec![
            add(owner, 2, admin, Role::Admin),
            add(admin, 1, till, Role::Till),
            revoke(owner, 3, till, 4),
        ];
        let m = Membership::compute(owner, &ops);
        assert_eq!(m.get(&till).unwrap().last_seq, Some(4));
        // A till promoted to admin by the owner may then admit devices.
        let other = dev(4);
        let ops = vec![
            add(owner, 1, till, Role::Till),
            OpRecord {
                author: owner,
                seq: 2,
                op: MemberOp::ChangeRole {
                    device: till,
                    role: Role::Admin,
                    from_seq: 3,
                },
            },
            add(till, 3, other, Role::Viewer),
            add(till, 2, dev(5), Role::Viewer),
        ];
        let m = Membership::compute(owner, &ops);
        assert!(m.is_active(&other));
        assert!(m.get(&dev(5)).is_none(), "written while still a till");
    }

    proptest! {
        #[test]
        fn any_arrival_order_gives_the_same_membership(
            script in proptest::collection::vec((0u8..5, 0u8..4, 0u8..5, 0u64..4), 1..14),
            seed in any::<u64>(),
        ) {
            // Devices 1..=5, 1 the owner. Ops written by random authors at increasing seqs.
            let mut seqs = BTreeMap::new();
            let mut ops = Vec::new();
            for (author, kind, target, n) in script {
                let author = dev(author + 1);
                let target = dev(target + 1);
                let seq = seqs.entry(author).and_modify(|s| *s += 1).or_insert(1u64);
                let op = match kind {
                    0 | 1 => MemberOp::Add {
                        device: target,
                        role: if n % 2 == 0 { Role::Admin } else { Role::Till },
                        name: String::new(),
                    },
                    2 => MemberOp::ChangeRole { device: target, role: Role::Admin, from_seq: n + 1 },
                    _ => MemberOp::Revoke { device: target, last_seq: n },
                };
                ops.push(OpRecord { author, seq: *seq, op });
            }
            let first = Membership::compute(dev(1), &ops);
            let mut shuffled = ops.clone();
            let mut s = seed;
            for i in (1..shuffled.len()).rev() {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                shuffled.swap(i, (s >> 33) as usize % (i + 1));
            }
            prop_assert_eq!(first, Membership::compute(dev(1), &shuffled));
        }
    }
}
