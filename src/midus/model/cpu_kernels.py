"""CPU kernels for the memory layer's hot spots, where PyTorch's ops cost far more than their FLOPs
(benchmarks/memory_cost.py):

- `select`: the exact product-key top-k of every (token, head) in one pass. PyTorch needs a `topk`
  per half (about 1 us a row of 64 on one core), the staircase's adds, a second `topk` and gathers;
  this kernel does one query's both halves and the pairs in about 0.8 us (n 64, k 32);
- `scores_backward`: the retrieval's gradient in training, the query's (through its norm) and the sub-keys',
  from the few sub-keys each query retrieved (the PyTorch path scatters the winners into a score grid
  [N, H, 2, n] and runs two batched matmuls over all of it);
- `retrieve`: decode's whole retrieval (norm, sub-key scores, selection, softmax) of a few queries in
  one call, where a dozen PyTorch ops each cost more in dispatch than in work;
- `pool` and `pool_backward`: the weighted pooling `sum_t w_t bank[slot_t]` and its gradients, the
  bank's (rows scattered by slot) and the weights' (one dot per retrieved row); on request the pooled
  rows again, from the rows that pass reads anyway (HIVE's backward, which keeps no latents).

The C++ source below is compiled on first use by the system's C++ compiler (`$CXX`, else c++, g++,
clang++) into midus's cache (`$MIDUS_CACHE/kernels`, else ~/.cache/midus/kernels), keyed by the
source, the compiler and the CPU, and loaded with ctypes: no PyTorch headers, seconds to build.
Where no compiler works, or with MIDUS_CPU_KERNELS=0, the memory layer runs its PyTorch reference
path (retrieval.py, values.py), which the tests hold these kernels equal to. Under torch.compile the
selection, the one-call retrieval and the pooling without a gradient are custom ops
(`torch.ops.midus.select_<hash>`, `retrieve_<hash>`, `pool_<hash>`), opaque to the compiler; a compiled
training step pools with embedding_bag.

This file ships with every MIDUS checkpoint, as the rest of this folder.
"""

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch
from transformers.utils import logging

SOURCE = r"""
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>
#ifdef __AVX2__
#include <immintrin.h>
#endif

namespace {

template <typename T> struct KeyOf;
template <> struct KeyOf<float> { using type = int32_t; };
template <> struct KeyOf<double> { using type = int64_t; };

// a < b  <=>  order_key(a) < order_key(b) for non-NaN values (-0 sorts just below +0)
template <typename T>
inline typename KeyOf<T>::type order_key(T value) {
    using K = typename KeyOf<T>::type;
    K bits;
    std::memcpy(&bits, &value, sizeof(T));
    return bits >= 0 ? bits : bits ^ std::numeric_limits<K>::max();
}

// t such that the k largest keys are those > t, then (ties) those == t, the k-th largest known to lie in
// [low, high]. Bisection on the key values that stops where a threshold cuts exactly k keys off: a few
// halvings for continuous scores.
template <typename K>
K top_threshold(const K* __restrict keys, int count, int k, K low, K high) {
    using U = typename std::make_unsigned<K>::type;
    constexpr U sign = U(1) << (8 * sizeof(K) - 1);
    U lo = U(low) ^ sign, hi = U(high) ^ sign;  // unsigned, same order; the k-th largest is in [lo, hi]
    while (lo < hi) {
        U gap = hi - lo, mid = lo + (gap >> 1) + (gap & 1);  // upper middle: lo < mid <= hi
        K threshold = K(mid ^ sign);
        int above = 0;
        for (int p = 0; p < count; ++p) above += keys[p] >= threshold;
        if (above == k) return K((mid - 1) ^ sign);
        if (above > k) lo = mid; else hi = mid - 1;
    }
    return K(lo ^ sign);
}

#ifdef __AVX2__
// LEFT_PACK[m]: the positions of mask m's set bits, packed into the low bytes (a permutation for vpermd)
struct LeftPack {
    uint64_t table[256];
    constexpr LeftPack() : table() {
        for (int mask = 0; mask < 256; ++mask) {
            int packed = 0;
            for (int lane = 0; lane < 8; ++lane)
                if (mask >> lane & 1) table[mask] |= uint64_t(lane) << (8 * packed++);
        }
    }
};
constexpr LeftPack LEFT_PACK;
#endif

// out[0, m): the positions of the m keys above t, in order; returns m (out needs m + 8 entries)
template <typename K>
int positions_above(const K* __restrict keys, int count, K t, int32_t* __restrict out) {
    int taken = 0, p = 0;
#ifdef __AVX2__
    if constexpr (sizeof(K) == 4) {  // 8 keys at a time: compare, then pack their positions left
        const __m256i threshold = _mm256_set1_epi32(t), eight = _mm256_set1_epi32(8);
        __m256i positions = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        for (; p + 8 <= count; p += 8) {
            __m256i above = _mm256_cmpgt_epi32(_mm256_loadu_si256((const __m256i*)(keys + p)), threshold);
            int mask = _mm256_movemask_ps(_mm256_castsi256_ps(above));
            __m256i order = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(int64_t(LEFT_PACK.table[mask])));
            _mm256_storeu_si256((__m256i*)(out + taken), _mm256_permutevar8x32_epi32(positions, order));
            taken += __builtin_popcount(mask);
            positions = _mm256_add_epi32(positions, eight);
        }
    }
#endif
    for (; p < count; ++p) {
        out[taken] = p;
        taken += keys[p] > t;
    }
    return taken;
}

// positions of the k largest keys (out needs k + 8 entries): those above the threshold, then ties
template <typename K>
void top_positions(const K* __restrict keys, int count, int k, int32_t* __restrict out, K low, K high) {
    if (k == count) {
        for (int p = 0; p < count; ++p) out[p] = p;
        return;
    }
    K t = top_threshold(keys, count, k, low, high);
    int taken = positions_above(keys, count, t, out);
    for (int p = 0; taken < k; ++p)
        if (keys[p] == t) out[taken++] = p;
}

// rank of each of k keys (descending; keys has k + 16 entries); equal keys by position, recounted only where two
// keys are equal: the ranks count larger keys, so they sum to k(k-1)/2 when all keys differ and to less otherwise
template <typename K>
void ranks_of(const K* __restrict keys, const int32_t* __restrict positions, int k, int32_t* __restrict rank) {
    for (int block = 0; block < k; block += 16) {  // sixteen ranks at a time, counted in registers
        int32_t larger[16] = {};
        for (int j = 0; j < k; ++j)
            for (int lane = 0; lane < 16; ++lane) larger[lane] += keys[j] > keys[block + lane];
        for (int lane = 0; lane < 16 && block + lane < k; ++lane) rank[block + lane] = larger[lane];
    }
    int64_t sum = 0;
    for (int i = 0; i < k; ++i) sum += rank[i];
    if (sum != int64_t(k) * (k - 1) / 2)
        for (int j = 0; j < k; ++j)
            for (int i = 0; i < k; ++i) rank[i] += (keys[j] == keys[i]) & (positions[j] < positions[i]);
}

// scratch of one thread: every array sized for n sub-keys, top-k k and the staircase's pairs
template <typename T>
struct Scratch {
    using K = typename KeyOf<T>::type;
    std::vector<K> keys, top_keys, pair_keys;
    std::vector<int32_t> top, rank, row_ids, col_ids, winners, pair_row, pair_col;
    std::vector<T> row_values, col_values, sums;
    Scratch(int n, int k, int pairs)
        : keys(n), top_keys(k + 16), pair_keys(pairs), top(k + 8), rank(k), row_ids(k), col_ids(k),
          winners(k + 8), pair_row(pairs), pair_col(pairs), row_values(k), col_values(k), sums(pairs) {
        for (int a = 0, p = 0; a < k; ++a)  // the staircase's pairs (a, b), a-major: (a + 1)(b + 1) <= k
            for (int b = 0; b < k / (a + 1); ++b, ++p) pair_row[p] = a, pair_col[p] = b;
    }
};

// the k largest of values[0, n) in descending order (equal values: lower index first)
template <typename T>
void sorted_top(const T* __restrict values, int n, int k, Scratch<T>& s, int32_t* __restrict ids,
                T* __restrict sorted) {
    auto* __restrict keys = s.keys.data();
    auto* __restrict top_keys = s.top_keys.data();
    int32_t* __restrict top = s.top.data();
    int32_t* __restrict rank = s.rank.data();
    for (int i = 0; i < n; ++i) keys[i] = order_key(values[i]);
    auto low = keys[0], high = keys[0];
    for (int i = 1; i < n; ++i) {
        low = keys[i] < low ? keys[i] : low;
        high = keys[i] > high ? keys[i] : high;
    }
    top_positions(keys, n, k, top, low, high);
    for (int i = 0; i < k; ++i) top_keys[i] = keys[top[i]];
    ranks_of(top_keys, top, k, rank);
    for (int i = 0; i < k; ++i) {
        ids[rank[i]] = top[i];
        sorted[rank[i]] = values[top[i]];
    }
}

// one query: the two halves' sorted top-k, then the top-k of the staircase pairs (a+1)(b+1) <= k
template <typename T>
void select_one(const T* __restrict rows, const T* __restrict cols, int n, int k, Scratch<T>& s,
                T* __restrict best, int64_t* __restrict slots) {
    int32_t* __restrict row_ids = s.row_ids.data();
    int32_t* __restrict col_ids = s.col_ids.data();
    T* __restrict row_values = s.row_values.data();
    T* __restrict col_values = s.col_values.data();
    T* __restrict sums = s.sums.data();
    auto* __restrict pair_keys = s.pair_keys.data();
    int32_t* __restrict winners = s.winners.data();
    sorted_top(rows, n, k, s, row_ids, row_values);
    sorted_top(cols, n, k, s, col_ids, col_values);
    int pairs = 0;
    for (int a = 0; a < k; ++a) {
        int width = k / (a + 1);
        T row = row_values[a];
        for (int b = 0; b < width; ++b) sums[pairs + b] = row + col_values[b];
        pairs += width;
    }
    for (int p = 0; p < pairs; ++p) pair_keys[p] = order_key(sums[p]);
    // the k-th largest pair lies between the first pair, (0, 0), and the k-th pair of row 0 or column 0 (the
    // staircase's pair k - 1, (0, k - 1), and its last, (k - 1, 0)): either has k pairs at least as large
    top_positions(pair_keys, pairs, k, winners, std::max(pair_keys[k - 1], pair_keys[pairs - 1]), pair_keys[0]);
    for (int t = 0; t < k; ++t) {
        int p = winners[t];
        best[t] = sums[p];
        slots[t] = int64_t(row_ids[s.pair_row[p]]) * n + col_ids[s.pair_col[p]];
    }
}

// runs body(begin, end) over [0, count) in up to `threads` chunks of at least `grain`, on OpenMP's
// threads: built with -fopenmp this library links libgomp.so.1, which resolves to the one PyTorch already
// loaded, so the chunks run on PyTorch's own pool (threads of our own would fight its spinning workers
// for the cores). Built without OpenMP, the pragma is ignored and the chunks run one after another.
template <typename F>
void parallel(int64_t count, int threads, int64_t grain, F body) {
    int64_t workers = std::max<int64_t>(1, std::min<int64_t>(threads, count / grain));
    if (workers == 1) return body(int64_t(0), count);
    int64_t chunk = (count + workers - 1) / workers;
    #pragma omp parallel for num_threads(workers) schedule(static, 1)
    for (int64_t w = 0; w < workers; ++w) body(w * chunk, std::min(count, (w + 1) * chunk));
}

int pair_count(int k) {
    int pairs = 0;
    for (int a = 0; a < k; ++a) pairs += k / (a + 1);
    return pairs;
}

// scores [tokens, heads, 2, n] (strides in elements, the last one 1) -> best [tokens, heads, k] and
// slots [tokens, heads, k] (row * n + col)
template <typename T>
int select(const T* scores, int64_t tokens, int64_t heads, int64_t token_stride, int64_t head_stride,
           int64_t half_stride, int n, int k, T* best, int64_t* slots, int threads) {
    if (k < 1 || k > n) return 1;
    int pairs = pair_count(k);
    parallel(tokens * heads, threads, 256, [=](int64_t begin, int64_t end) {
        Scratch<T> s(n, k, pairs);
        int64_t head = begin / tokens, token = begin % tokens;  // head-major: a head's scores lie together
        for (int64_t i = begin; i < end; ++i) {
            int64_t m = token * heads + head;
            const T* rows = scores + token * token_stride + head * head_stride;
            select_one(rows, rows + half_stride, n, k, s, best + m * k, slots + m * k);
            if (++token == tokens) token = 0, ++head;
        }
    });
    return 0;
}

// every slot in [0, bound): the kernels index tables with them
inline bool slots_within(const int64_t* slots, int64_t count, int64_t bound) {
    for (int64_t i = 0; i < count; ++i)
        if (slots[i] < 0 || slots[i] >= bound) return false;
    return true;
}

// rows are read at random: each loop asks for the row AHEAD retrievals on (its first cache line, the
// hardware fetches the rest) while it works on this one
constexpr int64_t AHEAD = 8;

template <typename T>
inline void prefetch(const T* table, const int64_t* slots, int64_t i, int64_t count, int64_t dim, int write = 0) {
    if (i + AHEAD < count) __builtin_prefetch(table + slots[i + AHEAD] * dim, write);
}

// <x, y> in 16 running sums (one sum would be a chain of dependent adds: no vectors)
template <typename T>
T dot(const T* x, const T* y, int64_t size) {
    T sums[16] = {};
    int64_t d = 0;
    for (; d + 16 <= size; d += 16)
        for (int j = 0; j < 16; ++j) sums[j] += x[d + j] * y[d + j];
    for (; d < size; ++d) sums[0] += x[d] * y[d];
    T total = 0;
    for (int j = 0; j < 16; ++j) total += sums[j];
    return total;
}

#if defined(__AVX2__) && defined(__FMA__)
// the sums of eight vectors' lanes, as one vector: lane r holds the sum of sums[r]
inline __m256 lane_sums(const __m256* sums) {
    __m256 pairs0 = _mm256_hadd_ps(sums[0], sums[1]), pairs1 = _mm256_hadd_ps(sums[2], sums[3]);
    __m256 pairs2 = _mm256_hadd_ps(sums[4], sums[5]), pairs3 = _mm256_hadd_ps(sums[6], sums[7]);
    __m256 quads0 = _mm256_hadd_ps(pairs0, pairs1), quads1 = _mm256_hadd_ps(pairs2, pairs3);  // per 128-bit half
    return _mm256_add_ps(_mm256_permute2f128_ps(quads0, quads1, 0x20), _mm256_permute2f128_ps(quads0, quads1, 0x31));
}
#endif

// out[i] = <x, rows[i]> for `count` rows of `size`: with AVX2, eight rows at a time, so that their sums
// leave the registers together instead of one horizontal sum per row
template <typename T>
void dots(const T* __restrict x, const T* __restrict rows, int count, int size, T* __restrict out) {
    int i = 0;
#if defined(__AVX2__) && defined(__FMA__)
    if constexpr (std::is_same_v<T, float>) {
        if (size % 8 == 0)
            for (; i + 8 <= count; i += 8) {
                __m256 sums[8];
                for (int r = 0; r < 8; ++r) sums[r] = _mm256_setzero_ps();
                for (int d = 0; d < size; d += 8) {
                    __m256 part = _mm256_loadu_ps(x + d);
                    for (int r = 0; r < 8; ++r)
                        sums[r] = _mm256_fmadd_ps(part, _mm256_loadu_ps(rows + int64_t(i + r) * size + d), sums[r]);
                }
                _mm256_storeu_ps(out + i, lane_sums(sums));
            }
    }
#endif
    for (; i < count; ++i) out[i] = dot(x, rows + int64_t(i) * size, size);
}

#ifdef __AVX2__
// pool_bag for float rows of V * 8: the sum held in V registers, row after row as pool_bag's plain loop adds them
template <int V>
void pool_bag_in_registers(const float* bank, const int64_t* slots, const float* weights, int64_t first,
                           int64_t size, int64_t count, int64_t dim, float* __restrict out) {
    __m256 sum[V];
    for (int v = 0; v < V; ++v) sum[v] = _mm256_setzero_ps();
    for (int64_t t = first; t < first + size; ++t) {
        prefetch(bank, slots, t, count, dim);
        const float* row = bank + slots[t] * dim;
        __m256 w = _mm256_set1_ps(weights[t]);
        for (int v = 0; v < V; ++v) sum[v] = _mm256_add_ps(sum[v], _mm256_mul_ps(w, _mm256_loadu_ps(row + 8 * v)));
    }
    for (int v = 0; v < V; ++v) _mm256_storeu_ps(out + 8 * v, sum[v]);
}

constexpr void (*POOL_BAG_IN_REGISTERS[8])(const float*, const int64_t*, const float*, int64_t, int64_t, int64_t,
                                           int64_t, float*) = {
    pool_bag_in_registers<1>, pool_bag_in_registers<2>, pool_bag_in_registers<3>, pool_bag_in_registers<4>,
    pool_bag_in_registers<5>, pool_bag_in_registers<6>, pool_bag_in_registers<7>, pool_bag_in_registers<8>};
#endif

// sum += w * row, element by element (a pooled sum; a gradient row)
template <typename T>
inline void add_scaled(T* __restrict sum, T w, const T* __restrict row, int64_t dim) {
    for (int64_t d = 0; d < dim; ++d) sum[d] += w * row[d];
}

// out[0, dim) = sum_t weights[t] * bank[slots[t]] over one bag, t in [first, first + size) of `count` retrievals.
// A sum in memory waits at every row on its own stores: with AVX2, float rows of up to 64 are summed in registers.
template <typename T>
void pool_bag(const T* bank, const int64_t* slots, const T* weights, int64_t first, int64_t size, int64_t count,
              int64_t dim, T* __restrict out) {
#ifdef __AVX2__
    if constexpr (std::is_same_v<T, float>)
        if (dim % 8 == 0 && dim <= 64 && dim > 0)
            return POOL_BAG_IN_REGISTERS[dim / 8 - 1](bank, slots, weights, first, size, count, dim, out);
#endif
    for (int64_t d = 0; d < dim; ++d) out[d] = 0;
    for (int64_t t = first; t < first + size; ++t) {
        prefetch(bank, slots, t, count, dim);
        add_scaled(out, weights[t], bank + slots[t] * dim, dim);
    }
}

// out[b] = sum_t weights[b, t] * bank[slots[b, t]]: [bags, dim] (by bags)
template <typename T>
int pool_forward(const T* bank, int64_t n_slots, int64_t dim, const int64_t* slots, const T* weights,
                 int64_t bags, int64_t bag_size, T* out, int threads) {
    if (!slots_within(slots, bags * bag_size, n_slots)) return 1;
    parallel(bags, threads, 64, [=](int64_t begin, int64_t end) {
        for (int64_t b = begin; b < end; ++b)
            pool_bag(bank, slots, weights, b * bag_size, bag_size, bags * bag_size, dim, out + b * dim);
    });
    return 0;
}

// one retrieved row's share of pool_backward: returns <value, g> (dot()'s running sums) and adds w g to its
// gradient row
template <typename T>
inline T dot_and_scatter(const T* __restrict value, const T* __restrict g, T w, T* __restrict row, int64_t dim) {
    T sums[16] = {};
    int64_t d = 0;
    for (; d + 16 <= dim; d += 16)
        for (int j = 0; j < 16; ++j) {
            sums[j] += value[d + j] * g[d + j];
            row[d + j] += w * g[d + j];
        }
    for (; d < dim; ++d) {
        sums[0] += value[d] * g[d];
        row[d] += w * g[d];
    }
    T total = 0;
    for (int j = 0; j < 16; ++j) total += sums[j];
    return total;
}

// the retrievals a worker of pool_backward takes at a time: those in its rows of 4096 (its list stays in the
// cache), or of 2^18 to be grouped by slot when the bank is larger than BY_SLOT_BYTES (it is not in the cache:
// each retrieval in turn would fetch its row and its gradient row from memory; grouped, each is fetched once)
constexpr int64_t SCAN = 4096, BY_SLOT_SCAN = 1 << 18;
constexpr int64_t BY_SLOT_BYTES = 4 << 20;

// the gradients of the retrievals whose slot is one of rows [first_row, end_row), a scan at a time: those of the
// scan kept in their order, then (by_slot) grouped by slot in a stable counting sort. Either way each gradient
// row gets its adds in the order of the retrievals: the same sums as one pass over them all.
template <bool by_slot, typename T>
void gradients_of_rows(const T* bank, int64_t dim, const int64_t* slots, const T* weights, int64_t count,
                       int64_t bag_size, const T* grad, T* grad_bank, T* grad_weights, int64_t first_row,
                       int64_t end_row) {
    int64_t scan = std::min(count, by_slot ? BY_SLOT_SCAN : SCAN), rows = end_row - first_row;
    std::vector<int64_t> mine(scan), bag_of(scan), grouped(by_slot ? scan : 0), grouped_bag(by_slot ? scan : 0);
    std::vector<int64_t> starts(by_slot ? rows + 1 : 0);
    for (int64_t start = 0; start < count; start += scan) {
        int64_t stop = std::min(count, start + scan), found = 0;
        for (int64_t i = start, b = start / bag_size, t = start % bag_size; i < stop; ++i) {
            mine[found] = i, bag_of[found] = b;  // kept (found advances) when its slot is one of ours
            found += uint64_t(slots[i] - first_row) < uint64_t(rows);
            if (++t == bag_size) t = 0, ++b;
        }
        const int64_t *order = mine.data(), *bag = bag_of.data();
        if constexpr (by_slot) {
            std::fill(starts.begin(), starts.end(), 0);
            for (int64_t j = 0; j < found; ++j) ++starts[slots[mine[j]] - first_row + 1];
            for (int64_t r = 0; r < rows; ++r) starts[r + 1] += starts[r];
            for (int64_t j = 0; j < found; ++j) {
                int64_t at = starts[slots[mine[j]] - first_row]++;
                grouped[at] = mine[j], grouped_bag[at] = bag_of[j];
            }
            order = grouped.data(), bag = grouped_bag.data();
        }
        for (int64_t j = 0; j < found; ++j) {
            if (!by_slot && j + AHEAD < found) {
                __builtin_prefetch(bank + slots[order[j + AHEAD]] * dim);
                __builtin_prefetch(grad_bank + slots[order[j + AHEAD]] * dim, 1);
            }
            int64_t i = order[j];
            const T* g = grad + bag[j] * dim;
            if (grad_weights)
                grad_weights[i] = dot_and_scatter(bank + slots[i] * dim, g, weights[i], grad_bank + slots[i] * dim, dim);
            else
                add_scaled(grad_bank + slots[i] * dim, weights[i], g, dim);
        }
    }
}

// gradients of out[b] = sum_t weights[b, t] * bank[slots[b, t]] given grad = d loss / d out [bags, dim]:
// grad_weights[b, t] = <bank[slots[b, t]], grad[b]>, grad_bank[slot] += weights[b, t] * grad[b]. grad_bank
// comes zeroed. With `out`, out[b] again (pool_bag, as pool_forward: the same bits), right after the
// gradients have read its bag's rows into the cache (a caller that needs it in its backward need not keep it).
// One pass over the bags, in their order: on one thread with a bank in the cache, and split among threads when
// there is no bank gradient to race on. Otherwise the gradients by ranges of bank rows (gradients_of_rows: no two
// workers write one gradient row, and 4096 rows at n 64 split among any number of threads, where the 64 columns of
// a latent row split among 4 at most), grouped by slot for a bank larger than the cache; then `out` by bags.
// Every path gives the same bits.
template <typename T>
int pool_backward(const T* bank, int64_t n_slots, int64_t dim, const int64_t* slots, const T* weights,
                  int64_t bags, int64_t bag_size, const T* grad, T* grad_bank, T* grad_weights, T* out,
                  int threads) {
    int64_t count = bags * bag_size;
    if (!slots_within(slots, count, n_slots)) return 1;
    bool in_cache = n_slots * dim * int64_t(sizeof(T)) <= BY_SLOT_BYTES;
    if (grad_bank && grad_weights && threads <= 1 && in_cache) {  // its own loop: in a lambda it runs 17% slower
        for (int64_t b = 0; b < bags; ++b) {
            for (int64_t t = 0; t < bag_size; ++t) {
                int64_t i = b * bag_size + t;
                prefetch(bank, slots, i, count, dim);
                prefetch(grad_bank, slots, i, count, dim, 1);
                grad_weights[i] = dot_and_scatter(bank + slots[i] * dim, grad + b * dim, weights[i],
                                                  grad_bank + slots[i] * dim, dim);
            }
            if (out) pool_bag(bank, slots, weights, b * bag_size, bag_size, count, dim, out + b * dim);
        }
        return 0;
    }
    if (!grad_bank || (threads <= 1 && in_cache)) {
        parallel(bags, grad_bank ? 1 : threads, 64, [=](int64_t begin, int64_t end) {
            for (int64_t b = begin; b < end; ++b) {
                int64_t first = b * bag_size, last = first + bag_size;
                if (grad_weights)
                    for (int64_t i = first; i < last; ++i) {
                        prefetch(bank, slots, i, count, dim);
                        grad_weights[i] = dot(bank + slots[i] * dim, grad + b * dim, dim);
                    }
                else if (grad_bank)
                    for (int64_t i = first; i < last; ++i) {
                        prefetch(grad_bank, slots, i, count, dim, 1);
                        add_scaled(grad_bank + slots[i] * dim, weights[i], grad + b * dim, dim);
                    }
                if (out) pool_bag(bank, slots, weights, first, bag_size, count, dim, out + b * dim);
            }
        });
        return 0;
    }
    parallel(n_slots, threads, 64, [=](int64_t first_row, int64_t end_row) {
        (in_cache ? gradients_of_rows<false, T> : gradients_of_rows<true, T>)(
            bank, dim, slots, weights, count, bag_size, grad, grad_bank, grad_weights, first_row, end_row);
    });
    if (out)
        parallel(bags, threads, 64, [=](int64_t begin, int64_t end) {
            for (int64_t b = begin; b < end; ++b)
                pool_bag(bank, slots, weights, b * bag_size, bag_size, count, dim, out + b * dim);
        });
    return 0;
}

// the sum of term(d) over [0, size) in 8 running sums, as dot()
template <typename F>
double sum_over(int size, F term) {
    double sums[8] = {};
    int d = 0;
    for (; d + 8 <= size; d += 8)
        for (int j = 0; j < 8; ++j) sums[j] += term(d + j);
    for (; d < size; ++d) sums[0] += term(d);
    double total = 0;
    for (int j = 0; j < 8; ++j) total += sums[j];
    return total;
}

// a query normalised as F.rms_norm / F.layer_norm do without a scale (norm 1 / 2; 0: copied), in double:
// out = (x - mean) * scale; returns the scale
template <typename T>
double normalize(const T* __restrict x, int size, int norm, double eps, T* __restrict out) {
    double mean = norm == 2 ? sum_over(size, [=](int d) { return double(x[d]); }) / size : 0.0;
    double square = norm == 0 ? 0.0 : sum_over(size, [=](int d) { return (x[d] - mean) * (x[d] - mean); });
    double scale = norm == 0 ? 1.0 : 1.0 / std::sqrt(square / size + eps);
    for (int d = 0; d < size; ++d) out[d] = T((x[d] - mean) * scale);
    return scale;
}

// the whole retrieval of a few queries without gradients (decode): each (token, head) query [tokens, heads,
// key_dim] normalised, scored against its head's two sub-key tables keys [heads, 2, n, key_dim / 2],
// selected (select_one) and its k scores softmaxed: slots and weights [tokens, heads, k]
template <typename T>
int retrieve(const T* query, const T* keys, int64_t tokens, int64_t heads, int key_dim, int n, int k, int norm,
             double eps, int64_t* slots, T* weights, int threads) {
    if (k < 1 || k > n) return 1;
    int half = key_dim / 2, pairs = pair_count(k);
    parallel(tokens * heads, threads, 16, [=](int64_t begin, int64_t end) {
        Scratch<T> s(n, k, pairs);
        std::vector<T> q(key_dim), scores(2 * n), best(k);
        for (int64_t m = begin; m < end; ++m) {
            int64_t head = m % heads;
            normalize(query + m * key_dim, key_dim, norm, eps, q.data());
            for (int side = 0; side < 2; ++side)
                dots(q.data() + side * half, keys + (head * 2 + side) * n * half, n, half, scores.data() + side * n);
            select_one(scores.data(), scores.data() + n, n, k, s, best.data(), slots + m * k);
            T top = *std::max_element(best.begin(), best.end()), total = 0;
            for (int t = 0; t < k; ++t) total += weights[m * k + t] = std::exp(best[t] - top);
            for (int t = 0; t < k; ++t) weights[m * k + t] /= total;
        }
    });
    return 0;
}

// gradients of best[m, t] = <y_row, keys[head, 0, i]> + <y_col, keys[head, 1, j]> (slot = i n + j; y the query
// [rows, key_dim] normalised as `normalize`, its halves y_row and y_col; m = token * heads + head) given
// grad [rows, k]: grad_query [rows, key_dim] through the norm, and grad_keys [heads, 2, n, key_dim / 2]. Each
// sub-key a query retrieved gets its winners' gradients summed (in their order), then one row's share each way:
// a query reads its few retrieved sub-keys, where the score grid's matmuls read all 2n. By heads: no two workers
// write one head's keys, and each key row gets its adds in token order, whatever the number of threads.
template <typename T>
int scores_backward(const T* query, const T* keys, const int64_t* slots, const T* grad, int64_t tokens,
                    int64_t heads, int key_dim, int n, int k, int norm, double eps, T* grad_query, T* grad_keys,
                    int threads) {
    if (!slots_within(slots, tokens * heads * k, int64_t(n) * n)) return 1;
    int half = key_dim / 2;
    parallel(heads, threads, 1, [=](int64_t first_head, int64_t end_head) {
        std::vector<T> y(key_dim), dy(key_dim), summed(2 * n, T(0));
        std::vector<int64_t> last_query(2 * n, -1);  // the query that last retrieved each sub-key
        std::vector<int32_t> retrieved(2 * k + 1);
        for (int64_t head = first_head; head < end_head; ++head) {
            const T* head_keys = keys + head * 2 * n * half;
            T* head_grad = grad_keys + head * 2 * n * half;
            std::fill(head_grad, head_grad + 2 * n * half, T(0));
            for (int64_t token = 0; token < tokens; ++token) {
                int64_t m = token * heads + head;
                double scale = normalize(query + m * key_dim, key_dim, norm, eps, y.data());
                int count = 0;  // sub-keys 0 .. n - 1: rows, n .. 2n - 1: columns; listed once, without a branch
                for (int t = 0; t < k; ++t) {
                    uint32_t slot = uint32_t(slots[m * k + t]), row = slot / uint32_t(n);  // 32-bit: a faster divide
                    for (int key : {int(row), int(n + slot - row * n)}) {
                        retrieved[count] = key;
                        count += last_query[key] != m;
                        last_query[key] = m;
                        summed[key] += grad[m * k + t];
                    }
                }
                std::fill(dy.begin(), dy.end(), T(0));
                for (int r = 0; r < count; ++r) {
                    int key = retrieved[r], side = key < n ? 0 : 1;
                    T g = summed[key];
                    summed[key] = T(0);  // zeroed for the next query
                    const T* __restrict sub_key = head_keys + int64_t(key) * half;
                    T* __restrict sub_key_grad = head_grad + int64_t(key) * half;
                    T* __restrict dy_half = dy.data() + side * half;
                    const T* __restrict y_half = y.data() + side * half;
                    for (int d = 0; d < half; ++d) {
                        dy_half[d] += g * sub_key[d];
                        sub_key_grad[d] += g * y_half[d];
                    }
                }
                // through the norm: scale (dy - y mean(dy y)) for rms, minus its mean for layer, dy for none
                double projection = norm == 0 ? 0.0 : sum_over(key_dim, [&](int d) { return double(dy[d]) * y[d]; });
                auto centred = [&](int d) { return dy[d] - y[d] * projection / key_dim; };
                double mean = norm == 2 ? sum_over(key_dim, centred) / key_dim : 0.0;
                T* out = grad_query + m * key_dim;
                for (int d = 0; d < key_dim; ++d) out[d] = T(scale * (centred(d) - mean));
            }
        }
    });
    return 0;
}

}  // namespace

// the C entry points, one set per dtype (DTYPES below names the suffixes)
#define MIDUS_ENTRY_POINTS(T, suffix)                                                                             \
    int midus_select_##suffix(const T* scores, int64_t tokens, int64_t heads, int64_t token_stride,               \
                              int64_t head_stride, int64_t half_stride, int n, int k, T* best, int64_t* slots,    \
                              int threads) {                                                                      \
        return select(scores, tokens, heads, token_stride, head_stride, half_stride, n, k, best, slots, threads); \
    }                                                                                                             \
    int midus_pool_forward_##suffix(const T* bank, int64_t n_slots, int64_t dim, const int64_t* slots,            \
                                    const T* weights, int64_t bags, int64_t bag_size, T* out, int threads) {      \
        return pool_forward(bank, n_slots, dim, slots, weights, bags, bag_size, out, threads);                    \
    }                                                                                                             \
    int midus_pool_backward_##suffix(const T* bank, int64_t n_slots, int64_t dim, const int64_t* slots,           \
                                     const T* weights, int64_t bags, int64_t bag_size, const T* grad,             \
                                     T* grad_bank, T* grad_weights, T* out, int threads) {                        \
        return pool_backward(bank, n_slots, dim, slots, weights, bags, bag_size, grad, grad_bank, grad_weights,   \
                             out, threads);                                                                       \
    }                                                                                                             \
    int midus_retrieve_##suffix(const T* query, const T* keys, int64_t tokens, int64_t heads, int key_dim, int n,  \
                                int k, int norm, double eps, int64_t* slots, T* weights, int threads) {           \
        return retrieve(query, keys, tokens, heads, key_dim, n, k, norm, eps, slots, weights, threads);           \
    }                                                                                                             \
    int midus_scores_backward_##suffix(const T* query, const T* keys, const int64_t* slots, const T* grad,         \
                                       int64_t tokens, int64_t heads, int key_dim, int n, int k, int norm,         \
                                       double eps, T* grad_query, T* grad_keys, int threads) {                     \
        return scores_backward(query, keys, slots, grad, tokens, heads, key_dim, n, k, norm, eps, grad_query,      \
                               grad_keys, threads);                                                                \
    }

extern "C" {
MIDUS_ENTRY_POINTS(float, f32)
MIDUS_ENTRY_POINTS(double, f64)
}
"""

FLAGS = ["-O3", "-std=c++17", "-shared", "-fPIC"]
OPENMP = ["-fopenmp"]  # PyTorch's thread pool (see parallel() above); dropped if refused
NATIVE = ["-march=native"]  # built where it runs: the cache key names the CPU; dropped if refused
DTYPES = {torch.float32: "f32", torch.float64: "f64"}
HALF_DTYPES = (torch.bfloat16, torch.float16)  # the selection and the retrieval's backward take them in float32

logger = logging.get_logger("transformers.midus")
_lock = threading.Lock()
_loaded: dict[str, ctypes.CDLL | None] = {}


def enabled() -> bool:
    return os.environ.get("MIDUS_CPU_KERNELS", "1") != "0"


def library() -> ctypes.CDLL | None:
    """The compiled kernels, built on first use; None where they are off or cannot be built."""
    if not enabled():
        return None
    if "library" not in _loaded:
        with _lock:
            if "library" not in _loaded:
                try:
                    _loaded["library"] = load(build())
                except Exception as error:  # no compiler, a refused flag, an unwritable cache: the torch path
                    logger.warning(f"MIDUS CPU kernels unavailable ({error}); the memory layer runs its PyTorch "
                                   f"path on the CPU (slower, same results). MIDUS_CPU_KERNELS=0 skips them.")
                    _loaded["library"] = None
    return _loaded["library"]


def compiler() -> str:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return name
    raise RuntimeError("no C++ compiler found (set CXX)")


def cache_folder() -> Path:
    """midus's cache ($MIDUS_CACHE, else ~/.cache/midus), folder kernels."""
    return Path(os.environ.get("MIDUS_CACHE") or Path.home() / ".cache" / "midus") / "kernels"


def cpu_signature() -> str:
    """The CPU's model and features (Linux), so that a -march=native build is never run elsewhere."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    return "\n".join(next((line for line in lines if line.startswith(key)), "") for key in ("model name", "flags"))


def build() -> Path:
    """Compile SOURCE once per (source, compiler, CPU) into the cache folder; returns the library."""
    cxx = compiler()
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60).stdout
    key = hashlib.sha256("\0".join([SOURCE, cxx, version, platform.machine(), cpu_signature(), *FLAGS, *OPENMP]).encode())
    target = cache_folder() / f"midus_cpu_{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        source = Path(scratch) / "midus_cpu.cpp"
        source.write_text(SOURCE)
        built = Path(scratch) / target.name
        for extra in (NATIVE + OPENMP, OPENMP, NATIVE, []):
            result = subprocess.run([cxx, *FLAGS, *extra, str(source), "-o", str(built)], capture_output=True,
                                    text=True, timeout=300)
            if result.returncode == 0:
                os.replace(built, target)  # atomic: a concurrent build writes the same bytes
                return target
        raise RuntimeError(f"{cxx} failed: {result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ''}")


def load(path: Path) -> ctypes.CDLL:
    library = ctypes.CDLL(str(path))
    pointer, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    for suffix in DTYPES.values():
        select = getattr(library, f"midus_select_{suffix}")
        select.argtypes = [pointer, i64, i64, i64, i64, i64, i32, i32, pointer, pointer, i32]
        select.restype = i32
        forward = getattr(library, f"midus_pool_forward_{suffix}")
        forward.argtypes = [pointer, i64, i64, pointer, pointer, i64, i64, pointer, i32]
        forward.restype = i32
        backward = getattr(library, f"midus_pool_backward_{suffix}")
        backward.argtypes = [pointer, i64, i64, pointer, pointer, i64, i64, pointer, pointer, pointer, pointer, i32]
        backward.restype = i32
        retrieve = getattr(library, f"midus_retrieve_{suffix}")
        retrieve.argtypes = [pointer, pointer, i64, i64, i32, i32, i32, i32, ctypes.c_double, pointer, pointer, i32]
        retrieve.restype = i32
        scores = getattr(library, f"midus_scores_backward_{suffix}")
        scores.argtypes = [pointer, pointer, pointer, pointer, i64, i64, i32, i32, i32, i32, ctypes.c_double,
                           pointer, pointer, i32]
        scores.restype = i32
    return library


@torch.compiler.assume_constant_result  # torch.compile: resolved (and built) once, at tracing
def built() -> bool:
    return library() is not None


def supports(tensor: torch.Tensor, half_precision: bool = False) -> bool:
    """Whether the kernels take this tensor: on the CPU, float32 or float64 (with `half_precision`, bfloat16 and
    float16 too, in float32), and built."""
    return (tensor.device.type == "cpu" and (tensor.dtype in DTYPES or half_precision and tensor.dtype in HALF_DTYPES)
            and built())


def _select(scores: torch.Tensor, topk: int) -> tuple[torch.Tensor, torch.Tensor]:
    tokens, heads, halves, n = scores.shape
    if halves != 2 or scores.stride(-1) != 1:
        scores = scores.contiguous()
    best = scores.new_empty(tokens, heads, topk)
    slots = torch.empty(tokens, heads, topk, dtype=torch.long)
    status = getattr(library(), f"midus_select_{DTYPES[scores.dtype]}")(
        scores.data_ptr(), tokens, heads, scores.stride(0), scores.stride(1), scores.stride(2), n, topk,
        best.data_ptr(), slots.data_ptr(), torch.get_num_threads())
    if status:
        raise ValueError(f"top-k {topk} must be between 1 and the {n} sub-keys of a half")
    return best, slots


def _pool(bank: torch.Tensor, slots: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    bank, slots, weights = (t.contiguous() for t in (bank, slots, weights))
    out = bank.new_empty(slots.shape[0], bank.shape[1])
    status = getattr(library(), f"midus_pool_forward_{DTYPES[bank.dtype]}")(
        bank.data_ptr(), bank.shape[0], bank.shape[1], slots.data_ptr(), weights.data_ptr(), slots.shape[0],
        slots.shape[1], out.data_ptr(), torch.get_num_threads())
    if status:
        raise IndexError(f"a slot outside the bank's {bank.shape[0]} rows")
    return out


NORMS = {"none": 0, "rms": 1, "layer": 2}


# one eps per query norm, whatever the dtype, so that a checkpoint retrieves alike in float32 and bfloat16
# (F.rms_norm's default is the input dtype's eps: 2^-7 in bfloat16, large against a small query's mean square)
NORM_EPS = {"none": 0.0, "rms": torch.finfo(torch.float32).eps, "layer": 1e-5}


def norm_eps(kind: str) -> float:
    """The eps of the query norm `kind`: float32's for rms (F.rms_norm's default there), F.layer_norm's for layer."""
    return NORM_EPS[kind]


def _retrieve(query: torch.Tensor, keys: torch.Tensor, topk: int, norm: str) -> tuple[torch.Tensor, torch.Tensor]:
    query, keys = query.contiguous(), keys.contiguous()
    tokens, heads, key_dim = query.shape
    n = keys.shape[2]
    eps = norm_eps(norm)
    slots = torch.empty(tokens, heads, topk, dtype=torch.long)
    weights = query.new_empty(tokens, heads, topk)
    status = getattr(library(), f"midus_retrieve_{DTYPES[query.dtype]}")(
        query.data_ptr(), keys.data_ptr(), tokens, heads, key_dim, n, topk, NORMS[norm], eps, slots.data_ptr(),
        weights.data_ptr(), torch.get_num_threads())
    if status:
        raise ValueError(f"top-k {topk} must be between 1 and the {n} sub-keys of a half")
    return slots, weights


FILE_HASH = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]


def _custom_op(function, fake):
    """`function` as a custom op for torch.compile (opaque to the compiler, `fake` gives its output shapes), once
    per process and version of this file: every checkpoint loads its own copy of this folder."""
    name = f"{function.__name__.strip('_')}_{FILE_HASH}"
    if not hasattr(torch.ops.midus, name):
        torch.library.custom_op(f"midus::{name}", function, mutates_args=()).register_fake(fake)
    return getattr(torch.ops.midus, name)


_select_op = _custom_op(_select, lambda scores, topk: (scores.new_empty(*scores.shape[:2], topk),
                                                       scores.new_empty(*scores.shape[:2], topk, dtype=torch.long)))
_pool_op = _custom_op(_pool, lambda bank, slots, weights: bank.new_empty(slots.shape[0], bank.shape[1]))
_retrieve_op = _custom_op(_retrieve, lambda query, keys, topk, norm: (
    query.new_empty(*query.shape[:2], topk, dtype=torch.long), query.new_empty(*query.shape[:2], topk)))


def select(scores: torch.Tensor, topk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k over the n*n product keys of every (token, head), from the halves' sub-key scores
    [N, H, 2, n] (no gradient): scores and slots [N, H, k]. bfloat16 and float16 scores are selected
    in float32: exact sums, where PyTorch's path rounds each sum first (near ties may then go either way)."""
    if scores.dtype in HALF_DTYPES:  # select on the exact sums; return them rounded as PyTorch's adds would
        best, slots = select(scores.float(), topk)
        return best.to(scores.dtype), slots
    return (_select_op if torch.compiler.is_compiling() else _select)(scores, topk)


def pool(bank: torch.Tensor, slots: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_t weights[b, t] * bank[slots[b, t]]: [bags, dim] (embedding_bag's weighted sum; no gradient)."""
    return (_pool_op if torch.compiler.is_compiling() else _pool)(bank, slots, weights)


def retrieve(query: torch.Tensor, keys: torch.Tensor, topk: int, norm: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole retrieval of a few queries [N, H, d_k] without gradients, in one call: each query normalised
    (`norm`: none, rms or layer, as `retrieval.normalize_query`), scored against its head's sub-keys [H, 2, n, d_k/2],
    its exact top-k selected and its scores softmaxed. Returns slots and weights [N, H, k]."""
    return (_retrieve_op if torch.compiler.is_compiling() else _retrieve)(query, keys, topk, norm)


def pool_backward(bank: torch.Tensor, slots: torch.Tensor, weights: torch.Tensor, grad: torch.Tensor,
                  bank_grad: bool, weights_grad: bool, pooled: bool = False
                  ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Gradients of `sum_t weights[b, t] * bank[slots[b, t]]` for the bank and the weights, and (`pooled`)
    that sum again, read in the same pass (what `pool` gives, bit for bit)."""
    bank, slots, weights, grad = (t.contiguous() for t in (bank, slots, weights, grad))
    grad_bank = torch.zeros_like(bank) if bank_grad else None
    grad_weights = torch.empty_like(weights) if weights_grad else None
    out = bank.new_empty(slots.shape[0], bank.shape[1]) if pooled else None
    status = getattr(library(), f"midus_pool_backward_{DTYPES[bank.dtype]}")(
        bank.data_ptr(), bank.shape[0], bank.shape[1], slots.data_ptr(), weights.data_ptr(), slots.shape[0],
        slots.shape[1], grad.data_ptr(), *(t.data_ptr() if t is not None else None for t in (grad_bank, grad_weights, out)),
        torch.get_num_threads())
    if status:
        raise IndexError(f"a slot outside the bank's {bank.shape[0]} rows")
    return grad_bank, grad_weights, out


def scores_backward(query: torch.Tensor, keys: torch.Tensor, slots: torch.Tensor, grad: torch.Tensor,
                    norm: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of the winners' scores best[..., t] = <y_row, keys[h, 0, slot // n]> + <y_col, keys[h, 1, slot % n]>
    (y: query [N, H, d_k] normalised by `norm`, as `retrieval.normalize_query`; keys [H, 2, n, d_k/2]) given grad
    [N, H, k] and slots [N, H, k]: the query's (through the norm) and the keys'. bfloat16 and float16 are
    computed in float32 and returned in their dtype."""
    eps = norm_eps(norm)
    if query.dtype in HALF_DTYPES:
        grad_query, grad_keys = _scores_backward(query.float(), keys.float(), slots, grad.float(), norm, eps)
        return grad_query.to(query.dtype), grad_keys.to(keys.dtype)
    return _scores_backward(query, keys, slots, grad, norm, eps)


def _scores_backward(query, keys, slots, grad, norm, eps):
    query, keys, slots, grad = (t.contiguous() for t in (query, keys, slots, grad))
    tokens, heads, key_dim = query.shape
    n = keys.shape[2]
    grad_query, grad_keys = torch.empty_like(query), torch.empty_like(keys)
    status = getattr(library(), f"midus_scores_backward_{DTYPES[query.dtype]}")(
        query.data_ptr(), keys.data_ptr(), slots.data_ptr(), grad.data_ptr(), tokens, heads, key_dim, n,
        slots.shape[-1], NORMS[norm], eps, grad_query.data_ptr(), grad_keys.data_ptr(),
        torch.get_num_threads())
    if status:
        raise IndexError(f"a slot outside the {n} x {n} grid")
    return grad_query, grad_keys
