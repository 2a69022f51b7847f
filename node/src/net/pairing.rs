//! Pairing: a new device proves it holds an admin's one-time short code, without sending it.
//!
//! # The exchange, on `/tillmesh/pair/1` (request-response, JSON)
//!
//! 1. The joiner sends `Start`: its SPAKE2 message (side A) and the name it wants.
//! 2. The inviter answers `Started`: its SPAKE2 message (side B) and `confirm_b`, a MAC under
//!    the shared key proving it holds the code.
//! 3. The joiner checks `confirm_b` (a mismatch means a wrong code, or an impostor), then sends
//!    `Finish` with its own `confirm_a`.
//! 4. The inviter checks `confirm_a`, commits the new device's admission with the invite's role,
//!    and answers `Welcome`: the mesh owner, the role, its own name.
//!
//! SPAKE2's identities are both sides' PeerIds, which Noise has already authenticated, so a
//! man in the middle holding two Noise sessions derives different keys on each side and
//! fails. A listener on the Wi-Fi sees only Noise ciphertext, and even the SPAKE2 messages
//! reveal nothing to test guesses against offline: each exchange tests one guess, online.
//!
//! # Limits
//!
//! - One invite open per device at a time; a new one replaces it.
//! - An invite is spent by one success, burnt after [`ATTEMPTS_MAX`] exchanges that did not
//!   succeed, and expires after its time (10 minutes unless told).
//! - At most [`STARTS_PER_MINUTE_MAX`] exchanges begin per minute, whatever the invite.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use spake2::{Ed25519Group, Identity, Password, Spake2};
use tillmesh_protocol::Role;

pub const PROTOCOL: &str = "/tillmesh/pair/1";
/// Exchanges an invite survives without success before it is burnt.
pub const ATTEMPTS_MAX: u32 = 5;
/// Exchanges that may begin per minute on one device.
pub const STARTS_PER_MINUTE_MAX: usize = 20;
/// How long an invite lasts unless told.
pub const DEFAULT_TTL: Duration = Duration::from_secs(600);
/// The longest an invite may last.
pub const TTL_MAX: Duration = Duration::from_secs(24 * 3600);
/// A joiner has this long between `Start` and `Finish`.
const SESSION_TTL: Duration = Duration::from_secs(30);
/// How long after an invite's expiry non-members may still connect to hear a refusal.
const GUESTS_AFTER_EXPIRY: Duration = Duration::from_secs(3600);
/// Sessions held at once; more starts are refused until some end.
const SESSIONS_MAX: usize = 16;
/// Characters of a code: Crockford's base32, without the letters people confuse.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// 8 characters, 40 bits: against 5 online guesses, out of reach.
const CODE_CHARS: usize = 8;
/// Longest name a joiner may ask for, in bytes.
const NAME_BYTES_MAX: usize = 64;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PairRequest {
    Start { spake: Vec<u8>, name: String },
    Finish { confirm: Vec<u8> },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PairResponse {
    Started {
        spake: Vec<u8>,
        confirm: Vec<u8>,
    },
    Welcome {
        owner: String,
        role: String,
        inviter_name: String,
    },
    Refused {
        reason: String,
    },
}

/// Why the inviter turned an exchange down. The text goes back to the joiner as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("this device has no open invite; ask an admin to run `tillmesh invite` on it")]
    NoInvite,
    #[error("the invite expired; ask for a new one")]
    Expired,
    #[error(
        "the invite was burnt after {ATTEMPTS_MAX} tries without the right code; ask for a new one"
    )]
    Burnt,
    #[error("too many pairing attempts on this device; wait a minute and try again")]
    RateLimited,
    #[error("the code is wrong")]
    WrongCode,
    #[error("no pairing exchange was started from this device (or it took over {}s)", SESSION_TTL.as_secs())]
    NoSession,
    #[error("the pairing message is malformed: {0}")]
    Malformed(String),
}

/// A short code, normalised: what people type is forgiving (case, dashes, O for 0).
pub fn normalize_code(code: &str) -> Option<String> {
    let s: String = code
        .chars()
        .filter(|c| !matches!(c, '-' | ' '))
        .map(|c| match c.to_ascii_uppercase() {
            'O' => '0',
            'I' | 'L' => '1',
            c => c,
        })
        .collect();
    (s.len() == CODE_CHARS && s.bytes().all(|b| ALPHABET.contains(&b))).then_some(s)
}

/// `K7M2-9QXD` from its normalised form.
pub fn display_code(code: &str) -> String {
    format!("{}-{}", &code[..4], &code[4..])
}

fn new_code() -> String {
    let mut bytes = [0u8; CODE_CHARS];
    getrandom::fill(&mut bytes).expect("the OS random source failed");
    bytes
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect()
}

fn spake(
    code: &str,
    joiner: &PeerId,
    inviter: &PeerId,
    side_a: bool,
) -> (Spake2<Ed25519Group>, Vec<u8>) {
    let password = Password::new(code.as_bytes());
    let (a, b) = (
        Identity::new(&joiner.to_bytes()),
        Identity::new(&inviter.to_bytes()),
    );
    if side_a {
        Spake2::<Ed25519Group>::start_a(&password, &a, &b)
    } else {
        Spake2::<Ed25519Group>::start_b(&password, &a, &b)
    }
}

/// What both sides MAC: who they are and what they said.
fn transcript(joiner: &PeerId, inviter: &PeerId, msg_a: &[u8], msg_b: &[u8]) -> Vec<u8> {
    let mut t = b"tillmesh-pair-v1".to_vec();
    for part in [&joiner.to_bytes()[..], &inviter.to_bytes(), msg_a, msg_b] {
        t.extend_from_slice(&(part.len() as u32).to_be_bytes());
        t.extend_from_slice(part);
    }
    t
}

fn mac(key: &[u8], label: &[u8], transcript: &[u8]) -> Hmac<Sha256> {
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(label);
    m.update(transcript);
    m
}

struct OpenInvite {
    code: String,
    role: Role,
    expires: Instant,
    attempts: u32,
}

struct Session {
    key: Vec<u8>,
    transcript: Vec<u8>,
    name: String,
    started: Instant,
}

/// The inviter's side: the open invite and the exchanges in progress. No I/O: the driver
/// feeds it requests and the time.
#[derive(Default)]
pub struct Inviter {
    open: Option<OpenInvite>,
    /// Devices that are not members may connect to pair until then: an hour past the last
    /// invite's expiry, so a late or repeated try hears why it failed.
    guests_until: Option<Instant>,
    sessions: HashMap<PeerId, Session>,
    starts: VecDeque<Instant>,
}

/// An invite as `tillmesh invite` shows it.
#[derive(Debug, Clone)]
pub struct Opened {
    pub code: String,
    pub role: Role,
    pub expires_in: Duration,
}

impl Inviter {
    /// Opens a new invite, replacing any open one.
    pub fn open(&mut self, role: Role, ttl: Duration, now: Instant) -> Opened {
        let code = new_code();
        self.guests_until = Some(now + ttl + GUESTS_AFTER_EXPIRY);
        self.open = Some(OpenInvite {
            code: code.clone(),
            role,
            expires: now + ttl,
            attempts: 0,
        });
        self.sessions.clear();
        Opened {
            code,
            role,
            expires_in: ttl,
        }
    }

    /// Until when devices that are not members may connect, to pair and nothing else.
    pub fn guests_until(&self) -> Option<Instant> {
        self.guests_until
    }

    /// Whether devices that are not members may connect, to pair and nothing else.
    pub fn accepts_guests(&self, now: Instant) -> bool {
        self.guests_until.is_some_and(|t| now < t)
    }

    /// Whether an invite is open.
    pub fn is_open(&self, now: Instant) -> bool {
        self.open
            .as_ref()
            .is_some_and(|i| i.expires > now && i.attempts < ATTEMPTS_MAX)
    }

    fn invite(&mut self, now: Instant) -> Result<&mut OpenInvite, Refusal> {
        let invite = self.open.as_mut().ok_or(Refusal::NoInvite)?;
        if invite.expires <= now {
            return Err(Refusal::Expired);
        }
        if invite.attempts >= ATTEMPTS_MAX {
            return Err(Refusal::Burnt);
        }
        Ok(invite)
    }

    /// Step 2: answers a joiner's `Start`. Every start counts as an attempt on the invite.
    pub fn start(
        &mut self,
        joiner: PeerId,
        local: PeerId,
        msg_a: &[u8],
        name: &str,
        now: Instant,
    ) -> Result<PairResponse, Refusal> {
        while self
            .starts
            .front()
            .is_some_and(|t| now.duration_since(*t) > Duration::from_secs(60))
        {
            self.starts.pop_front();
        }
        self.sessions
            .retain(|_, s| now.duration_since(s.started) < SESSION_TTL);
        if self.starts.len() >= STARTS_PER_MINUTE_MAX || self.sessions.len() >= SESSIONS_MAX {
            return Err(Refusal::RateLimited);
        }
        if name.is_empty() || name.len() > NAME_BYTES_MAX {
            return Err(Refusal::Malformed(format!(
                "a device name is 1 to {NAME_BYTES_MAX} bytes"
            )));
        }
        let invite = self.invite(now)?;
        invite.attempts += 1;
        let code = invite.code.clone();
        self.starts.push_back(now);
        let (state, msg_b) = spake(&code, &joiner, &local, false);
        let key = state
            .finish(msg_a)
            .map_err(|e| Refusal::Malformed(format!("{e:?}")))?;
        let transcript = transcript(&joiner, &local, msg_a, &msg_b);
        let confirm = mac(&key, b"inviter", &transcript)
            .finalize()
            .into_bytes()
            .to_vec();
        self.sessions.insert(
            joiner,
            Session {
                key,
                transcript,
                name: name.to_owned(),
                started: now,
            },
        );
        Ok(PairResponse::Started {
            spake: msg_b,
            confirm,
        })
    }

    /// Step 4: checks the joiner's confirmation. On success the invite is spent and the
    /// caller admits the device with the returned role and name.
    pub fn finish(
        &mut self,
        joiner: PeerId,
        confirm_a: &[u8],
        now: Instant,
    ) -> Result<(Role, String), Refusal> {
        let session = self.sessions.remove(&joiner).ok_or(Refusal::NoSession)?;
        if now.duration_since(session.started) >= SESSION_TTL {
            return Err(Refusal::NoSession);
        }
        // Checked in constant time: `verify_slice` compares without early exit.
        mac(&session.key, b"joiner", &session.transcript)
            .verify_slice(confirm_a)
            .map_err(|_| Refusal::WrongCode)?;
        let invite = self.invite(now)?;
        let role = invite.role;
        self.open = None;
        self.sessions.clear();
        Ok((role, session.name))
    }
}

/// The joiner's side of one exchange.
pub struct Joiner {
    state: Option<Spake2<Ed25519Group>>,
    msg_a: Vec<u8>,
    local: PeerId,
    inviter: PeerId,
}

impl Joiner {
    /// Step 1: the `Start` to send to `inviter`.
    pub fn start(code: &str, local: PeerId, inviter: PeerId, name: &str) -> (Joiner, PairRequest) {
        let (state, msg_a) = spake(code, &local, &inviter, true);
        (
            Joiner {
                state: Some(state),
                msg_a: msg_a.clone(),
                local,
                inviter,
            },
            PairRequest::Start {
                spake: msg_a,
                name: name.to_owned(),
            },
        )
    }

    /// Step 3: checks the inviter's answer; returns the `Finish` to send.
    pub fn confirm(&mut self, msg_b: &[u8], confirm_b: &[u8]) -> Result<PairRequest, Refusal> {
        let state = self.state.take().ok_or(Refusal::NoSession)?;
        let key = state
            .finish(msg_b)
            .map_err(|e| Refusal::Malformed(format!("{e:?}")))?;
        let transcript = transcript(&self.local, &self.inviter, &self.msg_a, msg_b);
        mac(&key, b"inviter", &transcript)
            .verify_slice(confirm_b)
            .map_err(|_| Refusal::WrongCode)?;
        Ok(PairRequest::Finish {
            confirm: mac(&key, b"joiner", &transcript)
                .finalize()
                .into_bytes()
                .to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> PeerId {
        libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id()
    }

    fn exchange(
        inviter: &mut Inviter,
        code: &str,
        joiner: PeerId,
        local: PeerId,
        now: Instant,
    ) -> Result<(Role, String), Refusal> {
        exchange_believing(inviter, code, joiner, local, local, now)
    }

    /// An exchange where the joiner believes it talks to `believed`.
    fn exchange_believing(
        inviter: &mut Inviter,
        code: &str,
        joiner: PeerId,
        local: PeerId,
        believed: PeerId,
        now: Instant,
    ) -> Result<(Role, String), Refusal> {
        let (mut j, start) = Joiner::start(code, joiner, believed, "Phone");
        let PairRequest::Start { spake, name } = start else {
            unreachable!()
        };
        let PairResponse::Started { spake: b, confirm } =
            inviter.start(joiner, local, &spake, &name, now)?
        else {
            unreachable!()
        };
        let finish = j.confirm(&b, &confirm);
        let PairRequest::Finish { confirm } = finish? else {
            unreachable!()
        };
        inviter.finish(joiner, &confirm, now)
    }

    #[test]
    fn right_code_pairs_once() {
        let (local, now) = (peer(), Instant::now());
        let mut inv = Inviter::default();
        let opened = inv.open(Role::Till, DEFAULT_TTL, now);
        assert_eq!(
            exchange(&mut inv, &opened.code, peer(), local, now),
            Ok((Role::Till, "Phone".into()))
        );
        // Spent: a second device with the same code is refused.
        assert_eq!(
            exchange(&mut inv, &opened.code, peer(), local, now),
            Err(Refusal::NoInvite)
        );
    }

    #[test]
    fn wrong_codes_burn_the_invite() {
        let (local, now) = (peer(), Instant::now());
        let mut inv = Inviter::default();
        let opened = inv.open(Role::Till, DEFAULT_TTL, now);
        for _ in 0..ATTEMPTS_MAX {
            assert_eq!(
                exchange(&mut inv, "AAAAAAAA", peer(), local, now),
                Err(Refusal::WrongCode)
            );
        }
        assert_eq!(
            exchange(&mut inv, &opened.code, peer(), local, now),
            Err(Refusal::Burnt)
        );
    }

    #[test]
    fn invites_expire_and_identities_are_bound() {
        let (local, now) = (peer(), Instant::now());
        let mut inv = Inviter::default();
        let opened = inv.open(Role::Viewer, Duration::from_secs(60), now);
        // A joiner that believes it talks to someone else derives another key.
        assert_eq!(
            exchange_believing(&mut inv, &opened.code, peer(), local, peer(), now),
            Err(Refusal::WrongCode)
        );
        assert_eq!(
            exchange(
                &mut inv,
                &opened.code,
                peer(),
                local,
                now + Duration::from_secs(61)
            ),
            Err(Refusal::Expired)
        );
    }

    #[test]
    fn codes_normalise() {
        assert_eq!(normalize_code("k7m2-9qxo").as_deref(), Some("K7M29QX0"));
        assert_eq!(normalize_code("K7M2"), None);
        assert_eq!(normalize_code("K7M2-9QXU"), None);
        let c = new_code();
        assert_eq!(normalize_code(&display_code(&c)), Some(c));
    }
}
