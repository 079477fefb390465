//! The snapshot's token table, shaped for 100 000+ tokens changed one at a time.
//!
//! A snapshot is immutable and swapped whole, so applying one token change means building the
//! next snapshot. With a plain hash map that is a copy of every token, O(N) per change. Here the
//! table is a persistent two-level trie: [`FANOUT`] nodes of [`FANOUT`] leaves, each leaf a
//! short vector. A change copies the root's and one node's pointer arrays and one leaf, and
//! shares everything else with the previous snapshot, so its cost does not depend on how many
//! tokens are stored. A full rebuild fills the trie in one pass.
//!
//! Tokens are found by SHA-256 digest: the leaf by the digest's first bytes, then every digest
//! in the leaf compared in constant time, so how long a lookup takes says nothing about how close
//! a guess was. A second trie by id serves revocation checks of open connections and finds the
//! digest of a token whose row is gone.

use std::sync::Arc;
use subtle::ConstantTimeEq;
use time::OffsetDateTime;
use uuid::Uuid;

/// Children per level: 128 × 128 = 16 384 leaves, about six tokens per leaf at 100 000.
const FANOUT: usize = 128;

/// An active agent token as the data path sees it.
#[derive(Debug)]
pub struct TokenEntry {
    pub id: Uuid,
    pub user: Arc<str>,
    pub digest: [u8; 32],
    /// Refused from this instant on, like a revoked token.
    pub expires_at: Option<OffsetDateTime>,
}

impl TokenEntry {
    /// Whether the token authenticates at `now`.
    pub fn valid_at(&self, now: OffsetDateTime) -> bool {
        self.expires_at.is_none_or(|e| now < e)
    }
}

/// A key that picks its leaf from well-mixed bits.
trait Slot {
    fn slot(&self) -> usize;
}

impl Slot for [u8; 32] {
    /// A SHA-256 is uniform already: its first two bytes.
    fn slot(&self) -> usize {
        (usize::from(self[0]) << 8) | usize::from(self[1])
    }
}

impl Slot for Uuid {
    /// Ids may be time-ordered (v7), so their bits are mixed first (splitmix64's finalizer).
    fn slot(&self) -> usize {
        let v = self.as_u128();
        let mut z = (v as u64) ^ ((v >> 64) as u64);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) as usize
    }
}

type Entries<K> = Vec<(K, Arc<TokenEntry>)>;
type Leaf<K> = Arc<Entries<K>>;
type Node<K> = Arc<Vec<Option<Leaf<K>>>>;

/// A persistent map from `K` to token entries (see the module doc).
#[derive(Clone)]
struct Trie<K> {
    root: Arc<Vec<Option<Node<K>>>>,
    len: usize,
}

fn split(slot: usize) -> (usize, usize) {
    ((slot / FANOUT) % FANOUT, slot % FANOUT)
}

impl<K: Slot + Clone + PartialEq> Trie<K> {
    fn new() -> Self {
        Trie {
            root: Arc::new(vec![None; FANOUT]),
            len: 0,
        }
    }

    /// Build in one pass from entries with distinct keys.
    fn from_entries(entries: impl Iterator<Item = (K, Arc<TokenEntry>)>) -> Self {
        let mut grid: Vec<Vec<Entries<K>>> =
            (0..FANOUT).map(|_| vec![Vec::new(); FANOUT]).collect();
        let mut len = 0;
        for (key, entry) in entries {
            let (n, l) = split(key.slot());
            grid[n][l].push((key, entry));
            len += 1;
        }
        let root = grid
            .into_iter()
            .map(|leaves| {
                if leaves.iter().all(Vec::is_empty) {
                    return None;
                }
                let node = leaves
                    .into_iter()
                    .map(|mut leaf| {
                        leaf.shrink_to_fit();
                        (!leaf.is_empty()).then(|| Arc::new(leaf))
                    })
                    .collect();
                Some(Arc::new(node))
            })
            .collect();
        Trie {
            root: Arc::new(root),
            len,
        }
    }

    /// The entries whose keys share `key`'s leaf.
    fn leaf(&self, key: &K) -> &[(K, Arc<TokenEntry>)] {
        let (n, l) = split(key.slot());
        self.root[n]
            .as_ref()
            .and_then(|node| node[l].as_ref())
            .map_or(&[], |leaf| leaf.as_slice())
    }

    fn get(&self, key: &K) -> Option<&Arc<TokenEntry>> {
        self.leaf(key)
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, e)| e)
    }

    /// Insert or replace (`Some`) or remove (`None`) `key`, copying only its path.
    fn set(&mut self, key: &K, entry: Option<Arc<TokenEntry>>) {
        let (n, l) = split(key.slot());
        let root = Arc::make_mut(&mut self.root);
        let node = Arc::make_mut(root[n].get_or_insert_with(|| Arc::new(vec![None; FANOUT])));
        let leaf = Arc::make_mut(node[l].get_or_insert_with(|| Arc::new(Vec::new())));
        let had = leaf.iter().position(|(k, _)| k == key);
        match (had, entry) {
            (Some(i), Some(e)) => leaf[i].1 = e,
            (None, Some(e)) => {
                // Exact: a leaf holds a handful, and Vec's first growth would reserve four.
                leaf.reserve_exact(1);
                leaf.push((key.clone(), e));
                self.len += 1;
            }
            (Some(i), None) => {
                leaf.swap_remove(i);
                self.len -= 1;
            }
            (None, None) => {}
        }
        if leaf.is_empty() {
            node[l] = None;
        }
    }
}

/// Active tokens by digest and by id; cloning shares everything.
#[derive(Clone)]
pub struct TokenTable {
    by_digest: Trie<[u8; 32]>,
    by_id: Trie<Uuid>,
}

impl Default for TokenTable {
    fn default() -> Self {
        TokenTable {
            by_digest: Trie::new(),
            by_id: Trie::new(),
        }
    }
}

impl TokenTable {
    /// A table of `entries` (later duplicates of a digest or id are dropped).
    pub fn build(entries: Vec<TokenEntry>) -> Self {
        let mut seen_digest = std::collections::HashSet::with_capacity(entries.len());
        let mut seen_id = std::collections::HashSet::with_capacity(entries.len());
        let entries: Vec<Arc<TokenEntry>> = entries
            .into_iter()
            .filter(|e| seen_digest.insert(e.digest) && seen_id.insert(e.id))
            .map(Arc::new)
            .collect();
        TokenTable {
            by_digest: Trie::from_entries(entries.iter().map(|e| (e.digest, e.clone()))),
            by_id: Trie::from_entries(entries.into_iter().map(|e| (e.id, e))),
        }
    }

    /// How many tokens are held.
    pub fn len(&self) -> usize {
        self.by_id.len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The token whose SHA-256 is `digest`, compared in constant time against every digest
    /// of its leaf (expiry is the caller's to check).
    pub fn by_digest(&self, digest: &[u8; 32]) -> Option<&Arc<TokenEntry>> {
        let mut found = None;
        for (stored, entry) in self.by_digest.leaf(digest) {
            if bool::from(stored.ct_eq(digest)) {
                found = Some(entry);
            }
        }
        found
    }

    pub fn by_id(&self, id: Uuid) -> Option<&Arc<TokenEntry>> {
        self.by_id.get(&id)
    }

    /// Hold `entry` under its id and digest, replacing what that id held.
    pub fn upsert(&mut self, entry: TokenEntry) {
        self.remove(entry.id);
        if let Some(other) = self.by_digest.get(&entry.digest).map(|e| e.id) {
            // A digest is unique in the store; a stale holder of it goes.
            self.remove(other);
        }
        let (id, digest) = (entry.id, entry.digest);
        let entry = Arc::new(entry);
        self.by_digest.set(&digest, Some(entry.clone()));
        self.by_id.set(&id, Some(entry));
    }

    /// Drop the token with this id, if held.
    pub fn remove(&mut self, id: Uuid) {
        if let Some(old) = self.by_id.get(&id).cloned() {
            self.by_digest.set(&old.digest, None);
            self.by_id.set(&id, None);
        }
    }

    /// Every held token (no order), for comparisons with the store.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<TokenEntry>> {
        self.by_id
            .root
            .iter()
            .flatten()
            .flat_map(|node| node.iter().flatten())
            .flat_map(|leaf| leaf.iter().map(|(_, e)| e))
    }

    /// Bytes the table holds: the tries' arrays and leaves, the entries and their labels
    /// (allocator overhead not counted).
    pub fn heap_bytes(&self) -> usize {
        fn trie_bytes<K>(t: &Trie<K>) -> usize {
            let ptr = std::mem::size_of::<Option<Node<K>>>();
            let mut bytes = FANOUT * ptr;
            for node in t.root.iter().flatten() {
                bytes += FANOUT * ptr;
                for leaf in node.iter().flatten() {
                    // The Arc's counters and the Vec header, then its buffer.
                    bytes += 16
                        + std::mem::size_of::<Vec<(K, Arc<TokenEntry>)>>()
                        + leaf.capacity() * std::mem::size_of::<(K, Arc<TokenEntry>)>();
                }
            }
            bytes
        }
        let entries: usize = self
            .iter()
            .map(|e| 16 + std::mem::size_of::<TokenEntry>() + e.user.len())
            .sum();
        trie_bytes(&self.by_digest) + trie_bytes(&self.by_id) + entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: u32) -> TokenEntry {
        let mut digest = [0u8; 32];
        digest[..4].copy_from_slice(&i.to_be_bytes());
        digest[4..8].copy_from_slice(&i.wrapping_mul(2_654_435_761).to_le_bytes());
        TokenEntry {
            id: Uuid::from_u128(u128::from(i) + 1),
            user: Arc::from("u"),
            digest,
            expires_at: None,
        }
    }

    #[test]
    fn changes_leave_the_previous_table_untouched_and_agree_with_a_rebuild() {
        let built = TokenTable::build((0..5_000).map(entry).collect());
        assert_eq!(built.len(), 5_000);
        let mut next = built.clone();
        for i in (0..5_000).step_by(3) {
            next.remove(entry(i).id);
        }
        for i in 5_000..6_000 {
            next.upsert(entry(i));
        }
        // The old snapshot still sees what it had.
        assert_eq!(built.len(), 5_000);
        assert!(built.by_digest(&entry(0).digest).is_some());
        assert!(next.by_digest(&entry(0).digest).is_none());
        assert!(next.by_id(entry(0).id).is_none());
        assert!(next.by_digest(&entry(5_500).digest).is_some());
        let expected: Vec<u32> = (0..6_000).filter(|i| *i >= 5_000 || i % 3 != 0).collect();
        let rebuilt = TokenTable::build(expected.iter().map(|i| entry(*i)).collect());
        assert_eq!(next.len(), rebuilt.len());
        let mut ids: Vec<Uuid> = next.iter().map(|e| e.id).collect();
        let mut want: Vec<Uuid> = rebuilt.iter().map(|e| e.id).collect();
        ids.sort();
        want.sort();
        assert_eq!(ids, want);
    }

    #[test]
    fn an_upsert_replaces_the_entry_of_its_id() {
        let mut t = TokenTable::default();
        t.upsert(entry(7));
        let mut moved = entry(8);
        moved.id = entry(7).id;
        t.upsert(moved);
        assert_eq!(t.len(), 1);
        assert!(t.by_digest(&entry(7).digest).is_none());
        assert_eq!(
            t.by_digest(&entry(8).digest).map(|e| e.id),
            Some(entry(7).id)
        );
        t.remove(entry(7).id);
        assert!(t.is_empty());
        assert!(t.by_digest(&entry(8).digest).is_none());
    }
}
