//! The named tensors that `const @"name"` ops refer to (the `.safetensors` file beside a model).
//! Reading and writing the file is the driver's job; this is the in-memory store.

use crate::tensor::Tensor;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Named weight tensors, shared cheaply between clones of a graph.
#[derive(Clone, Debug, Default)]
pub struct Weights {
    map: BTreeMap<String, Arc<Tensor>>,
}

impl Weights {
    /// Adds or replaces a tensor.
    pub fn insert(&mut self, name: impl Into<String>, t: Tensor) {
        self.map.insert(name.into(), Arc::new(t));
    }

    /// The tensor called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Tensor>> {
        self.map.get(name)
    }

    /// Whether a tensor called `name` exists.
    pub fn contains(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    /// Removes a tensor.
    pub fn remove(&mut self, name: &str) -> Option<Arc<Tensor>> {
        self.map.remove(name)
    }

    /// All tensors, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Arc<Tensor>)> {
        self.map.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The number of tensors.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Keeps only the tensors whose names satisfy `keep`.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.map.retain(|k, _| keep(k));
    }
}
