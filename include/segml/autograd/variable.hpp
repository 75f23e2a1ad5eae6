// segml/autograd/variable.hpp: reverse-mode automatic differentiation on a dynamic graph.
//
// A Var<T> is a handle to a node of the graph: its value (a Tensor<T>), its gradient, whether it
// requires a gradient, and the Node that produced it (grad_fn). Ops build the graph eagerly as they
// run (PyTorch eager style); backward() walks it once in reverse topological order, iteratively.
//
// THE GRADIENT-ACCUMULATION RULE (stated once, applied only in accumulate() below):
//   every gradient that flows into a Var is ADDED to what it already holds (grad += g).
//   - a leaf (parameter) keeps accumulating across backward() calls until zero_grad();
//   - an activation used by several ops receives the sum of their contributions;
//   - nothing is ever overwritten; the first contribution is stored without a copy unless it
//     aliases another live gradient, in which case it is cloned first.
//
// Memory: each Node keeps exactly what its backward needs (captured Tensors, never Vars). The graph's
// edges need only an intermediate's gradient slot, not its value: when the last Var handle to a
// non-leaf goes away, its value is released, even while the graph lives (as in PyTorch, where an
// activation nobody saved is freed during the forward). After a Node's backward has run,
// backward() drops it, so saved activations are freed as soon as possible and the graph is gone
// when backward() returns. Intermediate gradients are freed the same way.
// Under NoGradGuard no Node is created, so no activation is kept.
//
// Destruction of long graphs is iterative (see ~Node): a 10,000-op chain does not recurse.
//
// Gradient-ready hooks (what data-parallel training overlaps its communication with): a leaf may
// carry a hook (set_grad_ready_hook) that backward() calls, on the calling thread, once the leaf's
// gradient of that backward() is complete, i.e. right after the last node that feeds it has run.
// A leaf the graph does not reach is not called.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "segml/core/tensor.hpp"

namespace segml {

// ---- grad mode -----------------------------------------------------------
namespace detail {
inline bool& grad_mode_flag() {
  thread_local bool enabled = true;
  return enabled;
}
}  // namespace detail

inline bool grad_enabled() { return detail::grad_mode_flag(); }

// RAII: no graph is recorded while it lives (torch.no_grad()).
class NoGradGuard {
 public:
  NoGradGuard() : prev_(detail::grad_mode_flag()) { detail::grad_mode_flag() = false; }
  ~NoGradGuard() { detail::grad_mode_flag() = prev_; }
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool prev_;
};

template <class T>
struct VarImpl;

// Gradients an op's backward hands back, one slot per input, in the op's input order.
// needs(i) says whether input i wants a gradient; an op may skip computing it otherwise.
template <class T>
class Grads {
 public:
  explicit Grads(std::vector<bool> needed) : needed_(std::move(needed)), grads_(needed_.size()) {}
  bool needs(size_t i) const { return needed_[i]; }
  Tensor<T>& operator[](size_t i) { return grads_[i]; }
  size_t size() const { return grads_.size(); }

 private:
  std::vector<bool> needed_;
  std::vector<Tensor<T>> grads_;
};

// backward(grad_out, grads_in): fills grads_in[i] for each input that needs it.
template <class T>
using BackwardFn = std::function<void(const Tensor<T>& grad_out, Grads<T>& grads_in)>;

template <class T>
struct Node {
  std::string name;                                 // op name, for error messages and debugging
  std::vector<std::shared_ptr<VarImpl<T>>> inputs;  // the graph edges
  BackwardFn<T> backward;                           // owns the saved tensors

  Node(std::string n, std::vector<std::shared_ptr<VarImpl<T>>> in, BackwardFn<T> fn)
      : name(std::move(n)), inputs(std::move(in)), backward(std::move(fn)) {}
  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;

  // Releases the inputs iteratively: nested ~Node calls push onto the outermost call's stack
  // instead of recursing, so dropping a deep graph uses constant stack.
  ~Node() {
    thread_local std::vector<std::shared_ptr<VarImpl<T>>>* pending = nullptr;
    if (pending) {
      for (auto& in : inputs) pending->push_back(std::move(in));
      return;
    }
    std::vector<std::shared_ptr<VarImpl<T>>> stack = std::move(inputs);
    pending = &stack;
    while (!stack.empty()) {
      std::shared_ptr<VarImpl<T>> p = std::move(stack.back());
      stack.pop_back();
      p.reset();
    }
    pending = nullptr;
  }
};

template <class T>
struct VarImpl {
  Tensor<T> data;   // released when the last Var handle to a non-leaf goes away (see Var)
  Shape shape;      // data's shape, kept for checking gradients after data is released
  Tensor<T> grad;
  bool requires_grad = false;
  bool retain_grad = false;
  std::shared_ptr<Node<T>> grad_fn;  // null for leaves
  std::atomic<int64_t> handles{0};   // live Var handles (graph edges do not count)
  std::function<void()> grad_ready;  // leaves: called when backward() has completed this leaf's gradient
};

template <class T>
class Var {
 public:
  Var() = default;
  explicit Var(Tensor<T> data, bool requires_grad = false) : impl_(std::make_shared<VarImpl<T>>()) {
    impl_->shape = data.shape();
    impl_->data = std::move(data);
    impl_->requires_grad = requires_grad;
    impl_->handles = 1;
  }
  Var(const Var& o) : impl_(o.impl_) { acquire(); }
  Var(Var&& o) noexcept : impl_(std::move(o.impl_)) {}
  Var& operator=(const Var& o) {
    if (impl_ != o.impl_) {
      release();
      impl_ = o.impl_;
      acquire();
    }
    return *this;
  }
  Var& operator=(Var&& o) noexcept {
    if (this != &o) {
      release();
      impl_ = std::move(o.impl_);
    }
    return *this;
  }
  ~Var() { release(); }

  bool defined() const { return impl_ != nullptr; }
  const Tensor<T>& data() const { return impl_->data; }
  Tensor<T>& data() { return impl_->data; }
  const Tensor<T>& grad() const { return impl_->grad; }
  Tensor<T>& grad() { return impl_->grad; }
  const Shape& shape() const { return impl_->data.shape(); }
  int64_t size(int64_t d) const { return impl_->data.size(d); }
  int64_t dim() const { return impl_->data.dim(); }
  int64_t numel() const { return impl_->data.numel(); }

  bool requires_grad() const { return impl_ && impl_->requires_grad; }
  void set_requires_grad(bool r) {
    SEGML_CHECK(!impl_->grad_fn || r, "set_requires_grad(false) on a non-leaf Var produced by '",
                impl_->grad_fn->name, "'; use detach()");
    impl_->requires_grad = r;
  }
  bool is_leaf() const { return !impl_->grad_fn; }
  // Keep this non-leaf's gradient after backward() (torch retain_grad()).
  void retain_grad() { impl_->retain_grad = true; }
  void zero_grad() { impl_->grad = Tensor<T>(); }
  // Called by backward() once this leaf's gradient of that pass is complete (see the file comment);
  // an empty function removes the hook.
  void set_grad_ready_hook(std::function<void()> hook) {
    SEGML_CHECK(!impl_->grad_fn, "set_grad_ready_hook: only a leaf (a parameter) can carry a gradient-ready hook");
    impl_->grad_ready = std::move(hook);
  }
  const std::shared_ptr<Node<T>>& grad_fn() const { return impl_->grad_fn; }

  // A new leaf sharing this value, cut from the graph.
  Var detach() const { return Var(impl_->data, false); }

  // Backpropagates from a single-element Var with seed 1.
  void backward() const {
    SEGML_CHECK(numel() == 1, "backward(): the output has shape ", shape(),
                "; pass an explicit gradient for non-scalar outputs");
    backward(Tensor<T>::ones(shape()));
  }
  // Backpropagates grad_output (same shape as this Var) through the graph.
  void backward(const Tensor<T>& grad_output, bool retain_graph = false) const;

  const std::shared_ptr<VarImpl<T>>& impl() const { return impl_; }

 private:
  void acquire() {
    if (impl_) ++impl_->handles;
  }
  // The last handle to a non-leaf frees its value: the graph keeps only what backward captured.
  void release() {
    if (impl_ && --impl_->handles == 0 && impl_->grad_fn) impl_->data = Tensor<T>();
  }

  std::shared_ptr<VarImpl<T>> impl_;
};

namespace detail {
// The single place where gradients are combined: see THE GRADIENT-ACCUMULATION RULE above.
template <class T>
void accumulate(VarImpl<T>& v, Tensor<T> g) {
  const Shape& shape = v.data.defined() ? v.data.shape() : v.shape;  // a non-leaf's value may be released
  SEGML_CHECK(g.shape() == shape, "autograd: gradient of shape ", g.shape(), " does not match its variable's shape ",
              shape);
  if (!v.grad.defined())
    v.grad = std::move(g);
  else
    v.grad.add_(g);
}
}  // namespace detail

template <class T>
void Var<T>::backward(const Tensor<T>& grad_output, bool retain_graph) const {
  SEGML_CHECK(defined(), "backward(): undefined Var");
  SEGML_CHECK(impl_->requires_grad, "backward(): the output does not require grad (was it computed under NoGradGuard, "
                                    "or from inputs that do not require grad?)");
  SEGML_CHECK(grad_output.shape() == shape(), "backward(): gradient shape ", grad_output.shape(),
              " does not match output shape ", shape());

  // 1. Topological order of the non-leaf vars reachable from the output: iterative DFS, post-order.
  // `order` owns its vars: releasing a Node below may drop the last other reference to its inputs.
  std::vector<std::shared_ptr<VarImpl<T>>> order;
  std::unordered_set<VarImpl<T>*> visited;
  std::vector<std::pair<std::shared_ptr<VarImpl<T>>, size_t>> stack;
  if (impl_->grad_fn) {
    stack.emplace_back(impl_, 0);
    visited.insert(impl_.get());
  }
  while (!stack.empty()) {
    auto& [v, next] = stack.back();
    const auto& ins = v->grad_fn->inputs;
    if (next < ins.size()) {
      const std::shared_ptr<VarImpl<T>>& in = ins[next++];
      if (in->grad_fn && in->requires_grad && visited.insert(in.get()).second) stack.emplace_back(in, 0);
    } else {
      order.push_back(std::move(v));
      stack.pop_back();
    }
  }

  // Leaves with a gradient-ready hook: how many of the nodes still to run feed each of them.
  std::unordered_map<VarImpl<T>*, int64_t> feeds;
  for (const auto& v : order)
    for (const auto& in : v->grad_fn->inputs)
      if (!in->grad_fn && in->requires_grad && in->grad_ready) ++feeds[in.get()];

  // 2. Seed, then run each node after all its consumers (reverse post-order).
  detail::accumulate(*impl_, grad_output.clone());
  for (auto it = order.rbegin(); it != order.rend(); ++it) {
    VarImpl<T>* v = it->get();
    std::shared_ptr<Node<T>> node = v->grad_fn;
    if (v->grad.defined()) {
      std::vector<bool> needed(node->inputs.size());
      for (size_t i = 0; i < needed.size(); ++i) needed[i] = node->inputs[i]->requires_grad;
      Grads<T> grads(std::move(needed));
      SEGML_CHECK(static_cast<bool>(node->backward), "backward(): graph was already freed at op '", node->name,
                  "'; call backward(grad, /*retain_graph=*/true) to backpropagate twice");
      node->backward(v->grad, grads);
      // The gradients handed on may be accumulated into in place, so none may share storage with
      // another live gradient. grad_out's storage (a pass-through like add's, or a view like
      // reshape's) goes to the first input that receives it, without a copy, when this node's
      // gradient is released next; every other sharer gets a copy.
      bool grad_out_free = !v->retain_grad;
      for (size_t i = 0; i < grads.size(); ++i) {
        if (!grads.needs(i) || !grads[i].defined()) continue;
        Tensor<T> g = std::move(grads[i]);
        bool copy = false;
        if (g.shares_storage_with(v->grad)) {
          copy = !grad_out_free;
          grad_out_free = false;
        } else {  // the last of the sibling gradients sharing a storage takes it
          for (size_t j = i + 1; j < grads.size() && !copy; ++j) copy = g.shares_storage_with(grads[j]);
        }
        detail::accumulate(*node->inputs[i], copy ? g.clone() : std::move(g));
      }
    }
    if (!v->retain_grad && v != impl_.get()) v->grad = Tensor<T>();
    // The leaves this node fed last are complete now: their hooks run, in input order.
    if (!feeds.empty())
      for (const auto& in : node->inputs) {
        const auto f = feeds.find(in.get());
        if (f != feeds.end() && --f->second == 0) {
          feeds.erase(f);
          in->grad_ready();
        }
      }
    if (!retain_graph) {
      node->backward = nullptr;  // frees the saved tensors now
      v->grad_fn.reset();
    }
  }
  if (!impl_->retain_grad && impl_->grad_fn) impl_->grad = Tensor<T>();
  if (!retain_graph) impl_->grad_fn.reset();
}

// ---- recording an op -------------------------------------------------------
// True when an op with these inputs must record a Node (grad mode on, some input requires grad).
template <class T>
bool any_requires_grad(const std::vector<const Var<T>*>& inputs) {
  if (!grad_enabled()) return false;
  for (const Var<T>* v : inputs)
    if (v && v->defined() && v->requires_grad()) return true;
  return false;
}

// Wraps an op's output. When a graph must be recorded, the output gets a Node with the given
// inputs (undefined Vars are allowed, e.g. an absent bias) and backward function.
template <class T>
Var<T> make_result(Tensor<T> out, const char* op, const std::vector<const Var<T>*>& inputs, BackwardFn<T> fn) {
  if (!any_requires_grad<T>(inputs)) return Var<T>(std::move(out), false);
  std::vector<std::shared_ptr<VarImpl<T>>> edges;
  edges.reserve(inputs.size());
  for (const Var<T>* v : inputs) {
    // An undefined input still occupies its slot so grads[i] lines up; it never requires grad.
    edges.push_back(v && v->defined() ? v->impl() : std::make_shared<VarImpl<T>>());
  }
  Var<T> result(std::move(out), true);
  result.impl()->grad_fn = std::make_shared<Node<T>>(op, std::move(edges), std::move(fn));
  return result;
}

// The usual case: a fixed list of inputs, `make_result(out, "op", {&x, &w}, fn)`.
template <class T>
Var<T> make_result(Tensor<T> out, const char* op, std::initializer_list<const Var<T>*> inputs, BackwardFn<T> fn) {
  return make_result<T>(std::move(out), op, std::vector<const Var<T>*>(inputs), std::move(fn));
}

}  // namespace segml
