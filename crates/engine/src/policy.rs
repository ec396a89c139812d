//! Which waiting request is admitted next.
//!
//! - FCFS: arrival order; a preempted request goes back to the front.
//! - VTC (Sheng et al., OSDI 2024, "Fairness in Serving Large Language Models"): each client u
//!   has a virtual token counter c_u of the service it received, w_in per prompt token admitted
//!   plus w_out per token generated (1 and 2 by default: the paper's weights, an output token
//!   costing about twice an input token). The next request comes from the backlogged client
//!   (one with a waiting request) of the smallest counter. So that a client cannot bank service
//!   while idle, a client whose queue becomes non-empty is lifted to the smallest counter of the
//!   backlogged clients — or, when none is, to the counter of the last client whose queue
//!   emptied: c_u ← max(c_u, min_{v backlogged} c_v). With this the paper bounds the service gap
//!   between two backlogged clients (§4 of the paper): over any interval [t1, t2) in which
//!   both f and g are backlogged, |W_f(t1, t2) − W_g(t1, t2)| ≤ 2·U with
//!   U = max(w_in·L_in, w_out·M), L_in the longest prompt and M the most tokens the running
//!   batch holds (the KV cache's capacity in tokens). FCFS has no such bound: a client sending
//!   k times the other's rate gets about k times the service, and the gap grows with time.
//!
//! Orthogonal to the order is [`Batching`]: whether the waiting may join a running batch at
//! every step (continuous) or only an empty one (static).

use crate::request::RequestId;
use std::collections::{HashMap, VecDeque};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VtcWeights {
    pub input: f64,
    pub output: f64,
}

impl Default for VtcWeights {
    fn default() -> Self {
        VtcWeights {
            input: 1.0,
            output: 2.0,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Policy {
    Fcfs,
    Vtc(VtcWeights),
}

impl Policy {
    pub fn name(&self) -> &'static str {
        match self {
            Policy::Fcfs => "fcfs",
            Policy::Vtc(_) => "vtc",
        }
    }
}

/// A name that is none of a setting's choices (`--policy`, `--batching`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown {setting} '{given}': use {}", choices.join(" or "))]
pub struct UnknownChoice {
    pub setting: &'static str,
    pub given: String,
    pub choices: &'static [&'static str],
}

impl std::str::FromStr for Policy {
    type Err = UnknownChoice;
    fn from_str(s: &str) -> Result<Self, UnknownChoice> {
        match s {
            "fcfs" => Ok(Policy::Fcfs),
            "vtc" => Ok(Policy::Vtc(VtcWeights::default())),
            _ => Err(UnknownChoice {
                setting: "policy",
                given: s.to_string(),
                choices: &["fcfs", "vtc"],
            }),
        }
    }
}

/// When waiting requests may join the running batch.
///
/// - Continuous (iteration-level, Orca): at every step, into any free seat, beside the
///   sequences already decoding.
/// - Static: only into an empty batch. The batch is filled (up to the seat limit and the free
///   blocks) the step the last one left, is prefilled over as many steps as the token budget
///   needs, and runs until every sequence in it has finished; arrivals meanwhile wait. The same
///   engine, kernels and sampling: the baseline continuous batching is measured against.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Batching {
    #[default]
    Continuous,
    Static,
}

impl Batching {
    pub fn name(&self) -> &'static str {
        match self {
            Batching::Continuous => "continuous",
            Batching::Static => "static",
        }
    }
}

impl std::str::FromStr for Batching {
    type Err = UnknownChoice;
    fn from_str(s: &str) -> Result<Self, UnknownChoice> {
        match s {
            "continuous" => Ok(Batching::Continuous),
            "static" => Ok(Batching::Static),
            _ => Err(UnknownChoice {
                setting: "batching",
                given: s.to_string(),
                choices: &["continuous", "static"],
            }),
        }
    }
}

/// What the queue needs to know of a waiting item.
pub trait Queued {
    fn id(&self) -> RequestId;
    fn client(&self) -> &str;
}

/// The waiting requests under a policy, with the VTC counters.
#[derive(Debug)]
pub struct Waiting<T> {
    policy: Policy,
    /// FCFS: one queue. VTC: one per client, in `clients`.
    fifo: VecDeque<T>,
    clients: HashMap<String, VecDeque<T>>,
    counters: HashMap<String, f64>,
    /// The counter of the client whose queue emptied last (the lift when no client is backlogged).
    last_left: f64,
    len: usize,
}

impl<T: Queued> Waiting<T> {
    pub fn new(policy: Policy) -> Self {
        Waiting {
            policy,
            fifo: VecDeque::new(),
            clients: HashMap::new(),
            counters: HashMap::new(),
            last_left: 0.0,
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A client's counter (0 for one never seen).
    pub fn counter(&self, client: &str) -> f64 {
        self.counters.get(client).copied().unwrap_or(0.0)
    }

    fn min_backlogged(&self) -> Option<f64> {
        self.clients
            .iter()
            .filter(|(_, q)| !q.is_empty())
            .map(|(c, _)| self.counter(c))
            .min_by(f64::total_cmp)
    }

    /// A new request joins the back of its queue (VTC: lifting its client if it was idle).
    pub fn push(&mut self, item: T) {
        self.len += 1;
        match self.policy {
            Policy::Fcfs => self.fifo.push_back(item),
            Policy::Vtc(_) => {
                let client = item.client().to_string();
                let idle = self.clients.get(&client).is_none_or(VecDeque::is_empty);
                if idle {
                    let floor = self.min_backlogged().unwrap_or(self.last_left);
                    let c = self.counters.entry(client.clone()).or_insert(0.0);
                    *c = c.max(floor);
                }
                self.clients.entry(client).or_default().push_back(item);
            }
        }
    }

    /// A preempted request goes back to the front of its queue, its counter untouched: it was
    /// being served, so it has banked nothing.
    pub fn push_front(&mut self, item: T) {
        self.len += 1;
        match self.policy {
            Policy::Fcfs => self.fifo.push_front(item),
            Policy::Vtc(_) => {
                let client = item.client().to_string();
                self.counters.entry(client.clone()).or_insert(0.0);
                self.clients.entry(client).or_default().push_front(item);
            }
        }
    }

    /// The client VTC serves next: the backlogged one of the smallest counter (ties: the name,
    /// so that runs repeat).
    fn next_client(&self) -> Option<&str> {
        self.clients
            .iter()
            .filter(|(_, q)| !q.is_empty())
            .min_by(|(a, _), (b, _)| {
                self.counter(a)
                    .total_cmp(&self.counter(b))
                    .then_with(|| a.cmp(b))
            })
            .map(|(c, _)| c.as_str())
    }

    pub fn peek(&self) -> Option<&T> {
        match self.policy {
            Policy::Fcfs => self.fifo.front(),
            Policy::Vtc(_) => self.next_client().and_then(|c| self.clients[c].front()),
        }
    }

    pub fn pop(&mut self) -> Option<T> {
        let item = match self.policy {
            Policy::Fcfs => self.fifo.pop_front(),
            Policy::Vtc(_) => {
                let client = self.next_client()?.to_string();
                let q = self.clients.get_mut(&client)?;
                let item = q.pop_front();
                if q.is_empty() {
                    self.last_left = self.counter(&client);
                }
                item
            }
        };
        if item.is_some() {
            self.len -= 1;
        }
        item
    }

    /// Takes a waiting request out (cancelled before it ran).
    pub fn remove(&mut self, id: RequestId) -> Option<T> {
        let item = match self.policy {
            Policy::Fcfs => {
                let at = self.fifo.iter().position(|t| t.id() == id)?;
                self.fifo.remove(at)
            }
            Policy::Vtc(_) => {
                let (client, q) = self
                    .clients
                    .iter_mut()
                    .find(|(_, q)| q.iter().any(|t| t.id() == id))?;
                let at = q.iter().position(|t| t.id() == id)?;
                let item = q.remove(at);
                if q.is_empty() {
                    self.last_left = self.counters.get(client).copied().unwrap_or(0.0);
                }
                item
            }
        };
        if item.is_some() {
            self.len -= 1;
        }
        item
    }

    /// Every waiting request, emptying the queue (shutdown).
    pub fn drain(&mut self) -> Vec<T> {
        self.len = 0;
        let mut all: Vec<T> = self.fifo.drain(..).collect();
        for q in self.clients.values_mut() {
            all.extend(q.drain(..));
        }
        all
    }

    /// Service to charge: `input` prompt tokens admitted and `output` tokens generated.
    pub fn charge(&mut self, client: &str, input: usize, output: usize) {
        if let Policy::Vtc(w) = self.policy {
            let service = w.input * input as f64 + w.output * output as f64;
            // Looked up before inserting: this runs for every generated token, and `entry`
            // would allocate the client's name each time.
            match self.counters.get_mut(client) {
                Some(c) => *c += service,
                None => {
                    self.counters.insert(client.to_string(), service);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct R(RequestId, &'static str);
    impl Queued for R {
        fn id(&self) -> RequestId {
            self.0
        }
        fn client(&self) -> &str {
            self.1
        }
    }

    #[test]
    fn an_unknown_name_lists_the_choices() {
        assert_eq!("vtc".parse(), Ok(Policy::Vtc(VtcWeights::default())));
        assert_eq!("static".parse(), Ok(Batching::Static));
        assert_eq!(
            "lifo".parse::<Policy>().unwrap_err().to_string(),
            "unknown policy 'lifo': use fcfs or vtc"
        );
        assert_eq!(
            "dynamic".parse::<Batching>().unwrap_err().to_string(),
            "unknown batching 'dynamic': use continuous or static"
        );
    }

    #[test]
    fn fcfs_admits_in_arrival_order_and_preempted_first() {
        let mut q = Waiting::new(Policy::Fcfs);
        for (i, c) in ["b", "a", "b"].iter().enumerate() {
            q.push(R(i as u64, c));
        }
        assert_eq!(q.pop(), Some(R(0, "b")));
        q.push_front(R(9, "z"));
        let order: Vec<u64> = std::iter::from_fn(|| q.pop()).map(|r| r.0).collect();
        assert_eq!(order, vec![9, 1, 2]);
        assert!(q.is_empty());
    }

    #[test]
    fn vtc_serves_the_smallest_counter_and_charges_the_weights() {
        let mut q = Waiting::new(Policy::Vtc(VtcWeights::default()));
        for i in 0..4 {
            q.push(R(i, "heavy"));
        }
        q.push(R(10, "light"));
        q.push(R(11, "light"));
        // Both at 0: the name breaks the tie.
        assert_eq!(q.pop(), Some(R(0, "heavy")));
        q.charge("heavy", 10, 5);
        assert_eq!(q.counter("heavy"), 10.0 + 2.0 * 5.0);
        assert_eq!(q.pop(), Some(R(10, "light")));
        q.charge("light", 4, 0);
        assert_eq!(q.pop(), Some(R(11, "light")));
        q.charge("light", 4, 0);
        // light is at 8 but no longer backlogged: heavy is served though its counter is larger.
        assert_eq!(q.pop(), Some(R(1, "heavy")));
    }

    #[test]
    fn vtc_lifts_a_client_that_returns_to_the_backlogged_minimum() {
        let mut q = Waiting::new(Policy::Vtc(VtcWeights::default()));
        q.push(R(0, "a"));
        q.push(R(1, "a"));
        q.pop();
        q.charge("a", 100, 0);
        // "b" arrives idle with counter 0 while "a" (100) is backlogged: lifted to 100, so it
        // cannot claim 100 tokens of service banked while it sent nothing.
        q.push(R(2, "b"));
        assert_eq!(q.counter("b"), 100.0);
        // A client that is already backlogged is not lifted again.
        q.charge("a", 50, 0);
        q.push(R(3, "b"));
        assert_eq!(q.counter("b"), 100.0);
        // A client never lowers: lifting takes the max.
        q.charge("b", 500, 0);
        q.pop();
        q.pop();
        q.pop();
        assert!(q.is_empty());
        // Nobody is backlogged: a returning client is lifted to the last client that left.
        let left = q.counter("b");
        q.push(R(4, "c"));
        assert_eq!(q.counter("c"), left);
    }

    #[test]
    fn remove_takes_a_waiting_request_out() {
        for policy in [Policy::Fcfs, Policy::Vtc(VtcWeights::default())] {
            let mut q = Waiting::new(policy);
            q.push(R(0, "a"));
            q.push(R(1, "b"));
            assert_eq!(q.remove(0), Some(R(0, "a")));
            assert_eq!(q.remove(0), None);
            assert_eq!(q.len(), 1);
            assert_eq!(q.pop(), Some(R(1, "b")));
        }
    }
}
