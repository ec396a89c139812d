// The tensor table the optimizer kernels walk (grad_norm.cu, adamw.cu). Each kernel reads a
// device-resident table of tensor descriptors (ops/tensor_table.rs writes it once per parameter
// set and keeps it), split into work items (NORM_CHUNK elements for the norm, ADAM_CHUNK for
// AdamW); a block takes items grid-stride, so its items only increase: it finds its first
// item's tensor by binary search once and then steps forward through the table (a stride of G
// items crosses a tensor or two at most), rather than searching per item.
// One launch covers every parameter, so a 2.7B model's ~200 tensors cost one launch instead of
// ~200, and the small tensors (norm weights, biases) no longer pay a launch and a tail each.
//
// Both kernels run at most OPT_BLOCKS_PER_SM blocks an SM (the launch bounds cap the registers
// so that they fit) and the host launches exactly that many: one wave, every block resident
// from start to end, so a block's share of the items is its share of the time (adamw.cu says
// why its items are small).
//
// Aligned f32 runs move 16 bytes per load (float4), 16-bit runs 8 bytes (four elements); a
// tensor whose pointers are not aligned, and the last numel mod 4 elements, go one at a time.

// Threads a block has (ops/tensor_table.rs launches that many) and blocks an SM holds.
#define OPT_THREADS 256
#define OPT_BLOCKS_PER_SM 4

__device__ __forceinline__ Buf buf_of(void* p, int dt) {
    Buf b;
    b.p = p;
    b.dt = dt;
    b.pad = 0;
    return b;
}

// The descriptor whose items contain `item`: the last with first_item ≤ item.
template <typename T> __device__ __forceinline__ int find_tensor(const T* table, int count, i64 item) {
    int lo = 0, hi = count - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) >> 1;
        if (table[mid].first_item <= item) lo = mid; else hi = mid - 1;
    }
    return lo;
}

// The descriptor of `item` given the one of an earlier item (`at`): the table is sorted by
// first_item, so it lies at or after it.
template <typename T>
__device__ __forceinline__ int next_tensor(const T* table, int count, int at, i64 item) {
    while (at + 1 < count && table[at + 1].first_item <= item) at++;
    return at;
}
