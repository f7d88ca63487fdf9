//! The dispatcher's ready queue: priority inside a tenant and weighted fair sharing between
//! tenants, so a tenant that floods the queue cannot starve another.
//!
//! # Algorithm
//! Start-time fair queuing over tenants, with every dispatch costing one unit. Each tenant has a
//! virtual start tag; the tenant with the smallest tag is served next, and serving it advances its
//! tag by `1 / weight`, so over any busy period tenants are served in proportion to their weights.
//! The queue's virtual time is the tag of the last dispatch, and a tenant that becomes busy again
//! starts at `max(its tag, virtual time)`: it cannot bank credit while idle (no burst when it
//! returns), and a flood queued before it arrived does not delay it (it is next in line).
//!
//! Virtual time was chosen over deficit round robin because of affinity: when an agent can take
//! only some tasks, [`FairQueue::pop_eligible`] serves the most deserving tenant that has an
//! eligible task, and tenants passed over keep their small tags, so they are first in line for the
//! next agent that can serve them. Deficit round robin would need extra bookkeeping for the turns
//! skipped while its pointer moves on.
//!
//! # Affinity classes
//! Inside a tenant, items are grouped by a class (for example the canonical set of capabilities
//! and labels a task requires). Items of one class are equally eligible for a given agent, so an
//! eligibility check costs one look per class rather than one per item, and a task deep in the
//! queue is still found as long as its class is eligible. Within a class at most [`SCAN_LIMIT`]
//! items are examined, for predicates that also depend on the item itself.
//!
//! Push and pop are O(log n); [`FairQueue::pop_eligible`] is O(tenants × classes × log n) in the
//! worst case; [`FairQueue::remove`] (cancellation) is O(n).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// How many items of one class [`FairQueue::pop_eligible`] examines before moving on.
pub const SCAN_LIMIT: usize = 32;

/// One unit of service in virtual time. Large so that `VT_UNIT / weight` loses nothing that
/// matters; `u128` so that it cannot overflow in the life of a process.
const VT_UNIT: u128 = 1 << 48;

/// Order inside a class: higher priority first, then first in, first out.
type Key = (Reverse<i32>, u64);

#[derive(Debug)]
struct Tenant<T, C> {
    name: String,
    weight: u32,
    /// Virtual start time of this tenant's next dispatch.
    tag: u128,
    classes: BTreeMap<C, BTreeMap<Key, T>>,
    /// The first key of every non-empty class, so the tenant's best item is found in O(log).
    heads: BTreeSet<(Key, C)>,
    len: usize,
}

/// Ready items of many tenants, served by weighted fair share between tenants and by priority
/// (then FIFO) inside a tenant. `C` is the affinity class; use the default `()` for none.
#[derive(Debug)]
pub struct FairQueue<T, C = ()> {
    /// Every tenant ever seen, so an idle tenant keeps its tag; tenants are few.
    tenants: Vec<Tenant<T, C>>,
    by_name: HashMap<String, usize>,
    /// Tenants with at least one item, by tag, then by first appearance.
    active: BTreeSet<(u128, usize)>,
    vtime: u128,
    seq: u64,
    len: usize,
}

impl<T, C: Ord + Clone> Default for FairQueue<T, C> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> FairQueue<T, ()> {
    /// Adds an item without an affinity class.
    pub fn push(&mut self, tenant: &str, weight: u32, priority: i32, item: T) {
        self.push_in(tenant, weight, priority, (), item);
    }
}

impl<T, C: Ord + Clone> FairQueue<T, C> {
    pub fn new() -> Self {
        Self {
            tenants: Vec::new(),
            by_name: HashMap::new(),
            active: BTreeSet::new(),
            vtime: 0,
            seq: 0,
            len: 0,
        }
    }

    /// Adds an item of `class` for `tenant`. `weight` (at least 1; 0 counts as 1) becomes the
    /// tenant's weight from now on. Higher `priority` is served first within the tenant.
    pub fn push_in(&mut self, tenant: &str, weight: u32, priority: i32, class: C, item: T) {
        let ti = self.tenant_index(tenant);
        let key = (Reverse(priority), self.seq);
        self.seq += 1;
        let t = &mut self.tenants[ti];
        t.weight = weight.max(1);
        if t.len == 0 {
            t.tag = t.tag.max(self.vtime);
            self.active.insert((t.tag, ti));
        }
        let items = t.classes.entry(class.clone()).or_default();
        let old_head = items.first_key_value().map(|(k, _)| *k);
        items.insert(key, item);
        match old_head {
            Some(head) if head < key => {}
            Some(head) => {
                t.heads.remove(&(head, class.clone()));
                t.heads.insert((key, class));
            }
            None => {
                t.heads.insert((key, class));
            }
        }
        t.len += 1;
        self.len += 1;
    }

    /// Sets a tenant's weight (at least 1) for the dispatches to come.
    pub fn set_weight(&mut self, tenant: &str, weight: u32) {
        let ti = self.tenant_index(tenant);
        self.tenants[ti].weight = weight.max(1);
    }

    /// Takes the next item by fair share and priority.
    pub fn pop_next(&mut self) -> Option<T> {
        let &(_, ti) = self.active.first()?;
        let (key, class) = self.tenants[ti].heads.first().cloned()?;
        Some(self.take(ti, &class, key))
    }

    /// Takes the next item that `eligible` accepts, for an agent that can serve only some items.
    pub fn pop_matching(&mut self, eligible: impl FnMut(&T) -> bool) -> Option<T> {
        self.pop_eligible(|_| true, eligible)
    }

    /// Takes the next item of a tenant that `tenant_ok` accepts (for example, one under its
    /// concurrency quota) that `eligible` accepts. Tenants are tried in fair-share order; inside
    /// the first tenant with an eligible item, the highest-priority eligible item among the first
    /// [`SCAN_LIMIT`] of each class wins. Nothing skipped is charged or moved, so it keeps its place.
    pub fn pop_eligible(
        &mut self,
        mut tenant_ok: impl FnMut(&str) -> bool,
        mut eligible: impl FnMut(&T) -> bool,
    ) -> Option<T> {
        let mut found = None;
        for &(_, ti) in &self.active {
            let t = &self.tenants[ti];
            if !tenant_ok(&t.name) {
                continue;
            }
            let mut best: Option<(Key, &C)> = None;
            for (head, class) in &t.heads {
                // Heads are in priority order, so a class whose head ranks below the best find
                // so far cannot hold anything better.
                if best.is_some_and(|(k, _)| *head > k) {
                    break;
                }
                let hit = t.classes[class]
                    .iter()
                    .take(SCAN_LIMIT)
                    .find(|(_, item)| eligible(item));
                if let Some((&k, _)) = hit
                    && best.is_none_or(|(b, _)| k < b)
                {
                    best = Some((k, class));
                }
            }
            if let Some((k, class)) = best {
                found = Some((ti, k, class.clone()));
                break;
            }
        }
        let (ti, key, class) = found?;
        Some(self.take(ti, &class, key))
    }

    /// Removes every item `matches` accepts (cancellation) and returns them. Removal charges no
    /// tenant: only dispatches count towards fair share.
    pub fn remove(&mut self, mut matches: impl FnMut(&T) -> bool) -> Vec<T> {
        let mut removed = Vec::new();
        for (ti, t) in self.tenants.iter_mut().enumerate() {
            if t.len == 0 {
                continue;
            }
            let before = removed.len();
            for (class, items) in t.classes.iter_mut() {
                let keys: Vec<Key> = items
                    .iter()
                    .filter(|(_, item)| matches(item))
                    .map(|(k, _)| *k)
                    .collect();
                if keys.is_empty() {
                    continue;
                }
                let old_head = *items.first_key_value().unwrap().0;
                removed.extend(keys.iter().filter_map(|k| items.remove(k)));
                t.heads.remove(&(old_head, class.clone()));
                if let Some((&head, _)) = items.first_key_value() {
                    t.heads.insert((head, class.clone()));
                }
            }
            t.classes.retain(|_, items| !items.is_empty());
            let gone = removed.len() - before;
            t.len -= gone;
            self.len -= gone;
            if gone > 0 && t.len == 0 {
                self.active.remove(&(t.tag, ti));
            }
        }
        removed
    }

    /// Items waiting in all tenants.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Items waiting for one tenant.
    pub fn len_for(&self, tenant: &str) -> usize {
        self.by_name
            .get(tenant)
            .map_or(0, |&ti| self.tenants[ti].len)
    }

    /// Every tenant with waiting items and how many (for the queue-depth metric).
    pub fn depths(&self) -> impl Iterator<Item = (&str, usize)> {
        self.tenants
            .iter()
            .filter(|t| t.len > 0)
            .map(|t| (t.name.as_str(), t.len))
    }

    fn tenant_index(&mut self, tenant: &str) -> usize {
        if let Some(&ti) = self.by_name.get(tenant) {
            return ti;
        }
        let ti = self.tenants.len();
        self.tenants.push(Tenant {
            name: tenant.to_string(),
            weight: 1,
            tag: self.vtime,
            classes: BTreeMap::new(),
            heads: BTreeSet::new(),
            len: 0,
        });
        self.by_name.insert(tenant.to_string(), ti);
        ti
    }

    /// Removes one item and charges its tenant one dispatch.
    fn take(&mut self, ti: usize, class: &C, key: Key) -> T {
        let t = &mut self.tenants[ti];
        let items = t.classes.get_mut(class).expect("class of a queued item");
        let was_head = items.first_key_value().is_some_and(|(k, _)| *k == key);
        let item = items.remove(&key).expect("queued item");
        if was_head {
            t.heads.remove(&(key, class.clone()));
            match items.first_key_value() {
                Some((&head, _)) => {
                    t.heads.insert((head, class.clone()));
                }
                None => {
                    t.classes.remove(class);
                }
            }
        }
        t.len -= 1;
        self.len -= 1;
        self.active.remove(&(t.tag, ti));
        self.vtime = self.vtime.max(t.tag);
        t.tag += VT_UNIT / u128::from(t.weight);
        if t.len > 0 {
            self.active.insert((t.tag, ti));
        }
        item
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(served: &[(char, u32)], tenant: char) -> usize {
        served.iter().filter(|(t, _)| *t == tenant).count()
    }

    fn drain(q: &mut FairQueue<(char, u32)>, n: usize) -> Vec<(char, u32)> {
        (0..n).map_while(|_| q.pop_next()).collect()
    }

    #[test]
    fn a_flood_does_not_starve_a_newcomer() {
        let mut q = FairQueue::new();
        for i in 0..10_000 {
            q.push("A", 1, 50, ('A', i));
        }
        // A has already been served a while before B shows up.
        assert_eq!(count(&drain(&mut q, 100), 'A'), 100);
        for i in 0..10 {
            q.push("B", 1, 50, ('B', i));
        }
        let next = drain(&mut q, 20);
        assert_eq!(count(&next, 'B'), 10, "all of B within 20 pops: {next:?}");
        assert!(q.len_for("A") >= 9_000);
        assert_eq!(q.len_for("B"), 0);
        assert_eq!(q.len(), q.len_for("A"));
    }

    #[test]
    fn equal_weights_share_equally_and_weights_share_proportionally() {
        let mut q = FairQueue::new();
        for i in 0..3_000 {
            q.push("A", 1, 50, ('A', i));
            q.push("B", 1, 50, ('B', i));
            q.push("C", 2, 50, ('C', i));
        }
        let served = drain(&mut q, 400);
        let (a, b, c) = (
            count(&served, 'A'),
            count(&served, 'B'),
            count(&served, 'C'),
        );
        assert!(a.abs_diff(b) <= 1, "{a} vs {b}");
        assert!(
            c.abs_diff(2 * a) <= 2,
            "weight 2 gets twice weight 1: {c} vs {a}"
        );
        assert_eq!(a + b + c, 400);
    }

    #[test]
    fn an_idle_tenant_banks_no_credit() {
        let mut q = FairQueue::new();
        q.push("B", 1, 50, ('B', 0));
        drain(&mut q, 1);
        for i in 0..100 {
            q.push("A", 1, 50, ('A', i));
        }
        drain(&mut q, 50);
        for i in 0..100 {
            q.push("B", 1, 50, ('B', i));
        }
        let next = drain(&mut q, 20);
        let b = count(&next, 'B');
        assert!(
            (10..=11).contains(&b),
            "B alternates with A, no burst: {next:?}"
        );
        // Emptying and refilling does not reset a tenant to the front either.
        let mut q = FairQueue::new();
        for i in 0..10 {
            q.push("A", 1, 50, ('A', i));
            q.push("B", 1, 50, ('B', i));
        }
        let (a_first, _) = q.pop_next().unwrap();
        q.remove(|(t, _)| *t == a_first);
        for i in 0..10 {
            q.push(&a_first.to_string(), 1, 50, (a_first, i));
        }
        assert_ne!(q.pop_next().unwrap().0, a_first, "the other tenant's turn");
    }

    #[test]
    fn priority_then_fifo_inside_a_tenant() {
        let mut q = FairQueue::new();
        for (i, p) in [10, 90, 50, 90, 10, 50].into_iter().enumerate() {
            q.push("A", 1, p, (p, i));
        }
        let order: Vec<_> = std::iter::from_fn(|| q.pop_next()).collect();
        assert_eq!(
            order,
            [(90, 1), (90, 3), (50, 2), (50, 5), (10, 0), (10, 4)]
        );
        assert!(q.is_empty() && q.pop_next().is_none());
    }

    #[test]
    fn affinity_classes_find_deep_eligible_items() {
        // Items are (tenant, needs_gpu, n); the class is needs_gpu.
        let mut q: FairQueue<(char, bool, u32), bool> = FairQueue::new();
        for i in 0..1_000 {
            q.push_in("A", 1, 90, false, ('A', false, i));
        }
        q.push_in("A", 1, 10, true, ('A', true, 0));
        q.push_in("A", 1, 20, true, ('A', true, 1));
        // A GPU-only agent finds the GPU tasks behind 1,000 others, best priority first.
        let gpu = |it: &(char, bool, u32)| it.1;
        assert_eq!(q.pop_matching(gpu), Some(('A', true, 1)));
        assert_eq!(q.pop_matching(gpu), Some(('A', true, 0)));
        assert_eq!(q.pop_matching(gpu), None);
        assert_eq!(q.len(), 1_000, "nothing ineligible was taken");
        // Across classes the eligible item with the best priority wins.
        q.push_in("A", 1, 95, true, ('A', true, 2));
        assert_eq!(q.pop_matching(|_| true), Some(('A', true, 2)));
        assert_eq!(q.pop_matching(|_| true), Some(('A', false, 0)));
    }

    #[test]
    fn skipped_tenants_keep_their_turn() {
        let mut q: FairQueue<(char, bool, u32), bool> = FairQueue::new();
        for i in 0..50 {
            q.push_in("A", 1, 50, true, ('A', true, i));
            q.push_in("B", 1, 50, false, ('B', false, i));
        }
        // Agents that can only serve B's class take ten of B's items...
        for _ in 0..10 {
            assert_eq!(q.pop_matching(|it| !it.1).unwrap().0, 'B');
        }
        // ...and A, passed over, is first in line for any agent now.
        let next: Vec<_> = (0..10).map(|_| q.pop_next().unwrap().0).collect();
        assert_eq!(next.iter().filter(|t| **t == 'A').count(), 10, "{next:?}");
    }

    #[test]
    fn tenant_filter_and_item_scan() {
        let mut q = FairQueue::new();
        for i in 0..5 {
            q.push("A", 1, 50, ('A', i));
            q.push("B", 1, 50, ('B', i));
        }
        // Tenant A is at its quota: only B is served.
        let got = q.pop_eligible(|t| t != "A", |_| true).unwrap();
        assert_eq!(got.0, 'B');
        // A predicate on the item itself scans inside the class.
        assert_eq!(q.pop_matching(|it| it.1 == 3), Some(('A', 3)));
        assert_eq!(q.pop_eligible(|_| false, |_| true), None);
        // Beyond the scan limit an item-specific match is not found (classes are the way to
        // make such items findable).
        let mut deep = FairQueue::new();
        for i in 0..(SCAN_LIMIT as u32 + 5) {
            deep.push("A", 1, 50, ('A', i));
        }
        assert_eq!(deep.pop_matching(|it| it.1 == SCAN_LIMIT as u32 + 1), None);
    }

    #[test]
    fn remove_cancels_items_and_keeps_counts() {
        let mut q = FairQueue::new();
        for i in 0..10 {
            q.push("A", 1, i % 3, ('A', i));
            q.push("B", 1, 50, ('B', i));
        }
        let gone = q.remove(|(t, i)| *t == 'A' && i % 2 == 0);
        assert_eq!(gone.len(), 5);
        assert_eq!((q.len(), q.len_for("A"), q.len_for("B")), (15, 5, 10));
        assert_eq!(q.remove(|(t, _)| *t == 'B').len(), 10);
        let depths: Vec<_> = q.depths().collect();
        assert_eq!(depths, [("A", 5)]);
        let rest: Vec<_> = std::iter::from_fn(|| q.pop_next()).collect();
        assert_eq!(rest, [('A', 5), ('A', 1), ('A', 7), ('A', 3), ('A', 9)]);
        assert_eq!(q.len_for("nobody"), 0);
    }
}
