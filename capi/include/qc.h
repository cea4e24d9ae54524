/* qc's C ABI: load a model (.qir with its .safetensors beside it, or .onnx), compile it with the
 * JIT, run it on f32 inputs, free it. Every function that can fail returns NULL or -1 and leaves a
 * message for qc_last_error() (per thread). A compiled model may be run from many threads. */
#ifndef QC_H
#define QC_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct qc_model qc_model;

/* Loads and verifies a model. NULL on error. */
qc_model *qc_load(const char *path);

/* JIT-compiles a loaded model. 0 on success, -1 on error. */
int qc_compile(qc_model *model);

/* JIT-compiles a loaded model for `threads` threads, over which each qc_run splits its batch
   (outputs equal to one thread's). 0 on success, -1 on error: 0 threads, or more than one for a
   model whose images are not independent (dynamic quantization), with the reason in
   qc_last_error. */
int qc_compile_threads(qc_model *model, size_t threads);

/* The number of dims of the model's input and their sizes (0 for a dynamic dim), written to dims
 * (at most max_dims of them). Returns the rank, or -1 on error. */
int qc_input_dims(const qc_model *model, size_t *dims, size_t max_dims);

/* Runs a compiled model on one f32 input of the given shape; writes the f32 output (its element
 * count must be output_len) and returns 0, or returns -1 on error (wrong shape, NaN, ...). */
int qc_run(const qc_model *model, const float *input, const size_t *shape, size_t rank, float *output, size_t output_len);

/* Models of several inputs and outputs. Inputs go in the model's order, each of its element
 * type (qc_input_type: QC_F32 float, QC_I64 int64_t, e.g. token ids); outputs are f32. */
#define QC_F32 0
#define QC_I64 1
typedef struct qc_input {
    const void *data;    /* the product of shape[0..rank] elements of the input's type */
    const size_t *shape;
    size_t rank;
} qc_input;
typedef struct qc_output {
    float *data;         /* the caller's buffer of len floats */
    size_t len;
    size_t shape[8];     /* written by qc_run_many: the output's shape and rank */
    size_t rank;
} qc_output;

/* The number of inputs and outputs (0 for NULL), and their names (NULL if out of range; valid
 * while the model lives). */
size_t qc_input_count(const qc_model *model);
size_t qc_output_count(const qc_model *model);
const char *qc_input_name(const qc_model *model, size_t i);
const char *qc_output_name(const qc_model *model, size_t i);

/* Input i's element type (QC_F32 or QC_I64), or -1; its rank and dims as qc_input_dims. */
int qc_input_type(const qc_model *model, size_t i);
int qc_input_dims_at(const qc_model *model, size_t i, size_t *dims, size_t max_dims);

/* Runs a compiled model on all its inputs into all its outputs, writing each output's values,
 * shape and rank. 0 on success, -1 on error (counts, shapes, types, buffer sizes). */
int qc_run_many(const qc_model *model, const qc_input *inputs, size_t n_inputs, qc_output *outputs, size_t n_outputs);

/* Frees a model (NULL is allowed). */
void qc_free(qc_model *model);

/* The last error of this thread, or NULL. Valid until the next qc call on this thread. */
const char *qc_last_error(void);

#ifdef __cplusplus
}
#endif

#endif
