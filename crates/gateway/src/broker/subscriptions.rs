//! The subscriptions of one account's topic space: a tree of topic levels, so that matching a
//! topic costs its depth rather than the number of subscriptions.
//!
//! Each node holds the subscribers of the filter that ends there: plain ones by client ID, shared
//! ones (`$share/{group}/{filter}`) by group, each group served round-robin. The wildcard levels
//! `+` and `#` are children like any other level, followed only where the rules of MQTT 4.7 allow
//! (a filter starting with a wildcard does not match a topic starting with `$`).
//!
//! The tree also tells the fabric when this node begins or stops holding subscribers of a
//! filter (a plain filter's first subscriber, a shared group's first member, and their last),
//! so that a networked fabric asks for exactly the messages this node has subscribers for.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::sync::Arc;

use certfleet_mqtt::{QoS, TopicFilter, TopicName};

/// The options of one subscription, as the router needs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SubscriptionOptions {
    /// The maximum QoS granted.
    pub(crate) qos: QoS,
    /// MQTT 5 No Local: the subscriber's own messages are not delivered to it.
    pub(crate) no_local: bool,
    /// MQTT 5 Retain As Published: forwarded messages keep their RETAIN flag.
    pub(crate) retain_as_published: bool,
    /// MQTT 5 Subscription Identifier, echoed in every message delivered through the subscription.
    pub(crate) identifier: Option<NonZeroU32>,
}

/// One subscriber a message goes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) client_id: String,
    pub(crate) options: SubscriptionOptions,
}

/// Which subscriptions a message is matched against.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Scope<'a> {
    /// Every plain subscription and one member of every shared group (one node, or the
    /// in-process fabric).
    Everyone,
    /// The plain subscriptions only: shared groups are served through the network's queue
    /// groups, one member cluster-wide.
    Plain,
    /// One member of the shared group this filter names (`$share/{group}/{filter}`), if the
    /// message's topic matches the filter.
    Shared(&'a TopicFilter),
}

/// Told when this node begins (`true`) or stops (`false`) holding subscribers of a filter: a
/// plain filter's first and last subscriber, a shared group's first and last member (the filter
/// then names the group). Called with the account's space locked: it must not block.
pub(crate) type InterestSink = Arc<dyn Fn(&TopicFilter, bool) + Send + Sync>;

#[derive(Default)]
pub(crate) struct Subscriptions {
    root: Node,
    interest: Option<InterestSink>,
}

#[derive(Default)]
struct Node {
    children: HashMap<String, Node>,
    subscribers: HashMap<String, SubscriptionOptions>,
    shared: BTreeMap<String, SharedGroup>,
}

#[derive(Default)]
struct SharedGroup {
    members: Vec<(String, SubscriptionOptions)>,
    /// Where the next round-robin pick starts.
    next: usize,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.subscribers.is_empty() && self.shared.is_empty()
    }
}

impl Subscriptions {
    /// An empty tree that tells `interest` of the filters this node holds subscribers of.
    pub(crate) fn with_interest(interest: InterestSink) -> Self {
        Subscriptions { root: Node::default(), interest: Some(interest) }
    }

    fn tell(&self, filter: &TopicFilter, wanted: bool) {
        if let Some(interest) = &self.interest {
            interest(filter, wanted);
        }
    }

    /// Adds `client_id`'s subscription to `filter`, or replaces its options. Returns whether it
    /// existed before.
    pub(crate) fn insert(&mut self, client_id: &str, filter: &TopicFilter, options: SubscriptionOptions) -> bool {
        let mut node = &mut self.root;
        for level in filter.filter().split('/') {
            node = node.children.entry(level.to_owned()).or_default();
        }
        let (existed, first) = match filter.share_group() {
            None => {
                let first = node.subscribers.is_empty();
                (node.subscribers.insert(client_id.to_owned(), options).is_some(), first)
            }
            Some(group) => {
                let group = node.shared.entry(group.to_owned()).or_default();
                let first = group.members.is_empty();
                match group.members.iter_mut().find(|(member, _)| member == client_id) {
                    Some((_, existing)) => {
                        *existing = options;
                        (true, first)
                    }
                    None => {
                        group.members.push((client_id.to_owned(), options));
                        (false, first)
                    }
                }
            }
        };
        if first {
            self.tell(filter, true);
        }
        existed
    }

    /// The options of `client_id`'s subscription to `filter`, if it holds one.
    pub(crate) fn options(&self, client_id: &str, filter: &TopicFilter) -> Option<SubscriptionOptions> {
        let mut node = &self.root;
        for level in filter.filter().split('/') {
            node = node.children.get(level)?;
        }
        match filter.share_group() {
            None => node.subscribers.get(client_id).copied(),
            Some(group) => {
                let group = node.shared.get(group)?;
                group.members.iter().find(|(member, _)| member == client_id).map(|(_, options)| *options)
            }
        }
    }

    /// Removes `client_id`'s subscription to `filter`. Returns whether it existed.
    pub(crate) fn remove(&mut self, client_id: &str, filter: &TopicFilter) -> bool {
        let levels: Vec<&str> = filter.filter().split('/').collect();
        let Removal { removed, last } = remove(&mut self.root, &levels, client_id, filter.share_group());
        if last {
            self.tell(filter, false);
        }
        removed
    }

    /// The subscribers `topic` goes to within `scope`: plain subscriptions that match, and one
    /// member of each shared group that matches, picked round-robin among the members `online`
    /// accepts (or among all members when none is online). A client with several matching
    /// subscriptions appears once per subscription.
    pub(crate) fn matches(
        &mut self,
        topic: &TopicName,
        scope: Scope<'_>,
        online: impl Fn(&str) -> bool,
    ) -> Vec<Target> {
        let mut targets = Vec::new();
        if let Scope::Shared(filter) = scope {
            let (Some(group), true) = (filter.share_group(), filter.matches(topic)) else { return targets };
            let mut node = &mut self.root;
            for level in filter.filter().split('/') {
                let Some(child) = node.children.get_mut(level) else { return targets };
                node = child;
            }
            if let Some(group) = node.shared.get_mut(group) {
                targets.extend(group.pick(&online));
            }
            return targets;
        }
        let levels: Vec<&str> = topic.as_str().split('/').collect();
        let server_topic = topic.as_str().starts_with('$');
        let shared = matches!(scope, Scope::Everyone);
        collect_matches(&mut self.root, &levels, server_topic, &(online, shared), &mut targets);
        targets
    }

    /// Whether a message on `topic` would go to anyone (online or not), without picking
    /// shared-group members.
    pub(crate) fn any_subscriber(&self, topic: &str) -> bool {
        let levels: Vec<&str> = topic.split('/').collect();
        any_match(&self.root, &levels, topic.starts_with('$'))
    }
}

/// Whether any subscription (plain or shared) below `node` matches the levels left.
fn any_match(node: &Node, levels: &[&str], server_topic: bool) -> bool {
    let subscribed = |node: &Node| !node.subscribers.is_empty() || !node.shared.is_empty();
    if !server_topic && node.children.get("#").is_some_and(subscribed) {
        return true;
    }
    let Some((level, rest)) = levels.split_first() else { return subscribed(node) };
    (!server_topic && node.children.get("+").is_some_and(|any| any_match(any, rest, false)))
        || node.children.get(*level).is_some_and(|exact| any_match(exact, rest, false))
}

/// What a removal did: whether the subscription existed, and whether it was the filter's (or the
/// group's) last on this node.
#[derive(Clone, Copy, Default)]
struct Removal {
    removed: bool,
    last: bool,
}

fn remove(node: &mut Node, levels: &[&str], client_id: &str, group: Option<&str>) -> Removal {
    let Some((level, rest)) = levels.split_first() else {
        return match group {
            None => {
                let removed = node.subscribers.remove(client_id).is_some();
                Removal { removed, last: removed && node.subscribers.is_empty() }
            }
            Some(group) => {
                let Some(shared) = node.shared.get_mut(group) else { return Removal::default() };
                let before = shared.members.len();
                shared.members.retain(|(member, _)| member != client_id);
                let removed = shared.members.len() != before;
                let last = shared.members.is_empty();
                if last {
                    node.shared.remove(group);
                }
                Removal { removed, last: removed && last }
            }
        };
    };
    let Some(child) = node.children.get_mut(*level) else { return Removal::default() };
    let removed = remove(child, rest, client_id, group);
    if child.is_empty() {
        node.children.remove(*level);
    }
    removed
}

/// `levels` are the topic levels still to match below `node`; at the root, `server_topic` keeps
/// the wildcards from matching a `$` topic.
/// `take` says who is online and whether shared groups are served here.
fn collect_matches(
    node: &mut Node,
    levels: &[&str],
    server_topic: bool,
    take_from: &(impl Fn(&str) -> bool, bool),
    targets: &mut Vec<Target>,
) {
    // `#` matches the parent level too: `a/#` matches `a`.
    if !server_topic && let Some(rest_of_tree) = node.children.get_mut("#") {
        take(rest_of_tree, take_from, targets);
    }
    let Some((level, rest)) = levels.split_first() else {
        take(node, take_from, targets);
        return;
    };
    if !server_topic && let Some(any_level) = node.children.get_mut("+") {
        collect_matches(any_level, rest, false, take_from, targets);
    }
    if let Some(exact) = node.children.get_mut(*level) {
        collect_matches(exact, rest, false, take_from, targets);
    }
}

/// The subscribers of the filter ending at `node`: the plain ones, and one member of each shared
/// group when `shared`.
fn take(node: &mut Node, (online, shared): &(impl Fn(&str) -> bool, bool), targets: &mut Vec<Target>) {
    targets.extend(
        node.subscribers.iter().map(|(client_id, options)| Target { client_id: client_id.clone(), options: *options }),
    );
    if *shared {
        for group in node.shared.values_mut() {
            targets.extend(group.pick(online));
        }
    }
}

impl SharedGroup {
    /// The next member, round-robin among those `online` accepts (or among all when none is).
    fn pick(&mut self, online: &impl Fn(&str) -> bool) -> Option<Target> {
        let count = self.members.len();
        if count == 0 {
            return None;
        }
        let start = self.next % count;
        let pick = (0..count).map(|offset| (start + offset) % count).find(|&index| online(&self.members[index].0));
        let index = pick.unwrap_or(start);
        self.next = index + 1;
        let (client_id, options) = &self.members[index];
        Some(Target { client_id: client_id.clone(), options: *options })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> SubscriptionOptions {
        SubscriptionOptions { qos: QoS::AtMostOnce, no_local: false, retain_as_published: false, identifier: None }
    }

    fn matching(filters: &[&str], topic: &str) -> Vec<String> {
        let mut subscriptions = Subscriptions::default();
        for filter in filters {
            subscriptions.insert(filter, &TopicFilter::new(*filter).unwrap(), options());
        }
        let mut found: Vec<String> = subscriptions
            .matches(&TopicName::new(topic).unwrap(), Scope::Everyone, |_| true)
            .into_iter()
            .map(|target| target.client_id)
            .collect();
        found.sort();
        found
    }

    #[test]
    fn topic_matching() {
        let check = |filters: &[&str], topic: &str, expected: &[&str]| {
            assert_eq!(matching(filters, topic), expected, "{topic} against {filters:?}");
            let mut subscriptions = Subscriptions::default();
            for filter in filters {
                subscriptions.insert(filter, &TopicFilter::new(*filter).unwrap(), options());
            }
            assert_eq!(subscriptions.any_subscriber(topic), !expected.is_empty(), "{topic} against {filters:?}");
        };
        let all = ["a/b", "a/+", "a/#", "#", "+/b", "+", "a/b/c", "/#", "+/+"];
        check(&all, "a/b", &["#", "+/+", "+/b", "a/#", "a/+", "a/b"]);
        check(&all, "a", &["#", "+", "a/#"]);
        check(&all, "a/b/c", &["#", "a/#", "a/b/c"]);
        check(&all, "/x", &["#", "+/+", "/#"]);
        check(&all, "a/", &["#", "+/+", "a/#", "a/+"]);
        check(&all, "$SYS/b", &[]);
        check(&["$SYS/#", "$SYS/+", "+/b", "#"], "$SYS/b", &["$SYS/#", "$SYS/+"]);
        check(
            &["$aws/events/presence/+/+", "$aws/#"],
            "$aws/events/presence/connected/c1",
            &["$aws/#", "$aws/events/presence/+/+"],
        );
        check(&["a/+/c", "a/+"], "a/x/c", &["a/+/c"]);
        check(&["a/b"], "a/b/c", &[]);
        check(&["A/b"], "a/b", &[]);
    }

    #[test]
    fn removal_prunes_and_reports() {
        let mut subscriptions = Subscriptions::default();
        let filter = TopicFilter::new("a/+/c").unwrap();
        assert!(!subscriptions.insert("one", &filter, options()));
        assert!(subscriptions.insert("one", &filter, options()), "a second subscribe replaces");
        assert!(subscriptions.remove("one", &filter));
        assert!(!subscriptions.remove("one", &filter));
        assert!(subscriptions.root.is_empty());
    }

    #[test]
    fn shared_groups_take_turns_among_online_members() {
        let mut subscriptions = Subscriptions::default();
        let filter = TopicFilter::new("$share/g/t/+").unwrap();
        for member in ["a", "b", "c"] {
            subscriptions.insert(member, &filter, options());
        }
        subscriptions.insert("plain", &TopicFilter::new("t/#").unwrap(), options());
        let topic = TopicName::new("t/1").unwrap();
        let picks: Vec<String> = (0..6)
            .map(|_| {
                let targets = subscriptions.matches(&topic, Scope::Everyone, |member| member != "b");
                assert_eq!(targets.len(), 2, "the plain subscriber and one member");
                targets.into_iter().find(|target| target.client_id != "plain").unwrap().client_id
            })
            .collect();
        assert_eq!(picks, ["a", "c", "a", "c", "a", "c"]);
        assert!(subscriptions.remove("a", &filter));
        let mut picks: Vec<String> = (0..2)
            .map(|_| {
                subscriptions
                    .matches(&topic, Scope::Everyone, |_| false)
                    .into_iter()
                    .find(|t| t.client_id != "plain")
                    .unwrap()
                    .client_id
            })
            .collect();
        picks.sort();
        assert_eq!(picks, ["b", "c"], "with nobody online, every member still takes its turn");
    }
}
