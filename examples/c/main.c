/* Embeds qc from C: load the example MLP, compile it with the JIT, run one input, and show that a
 * wrong input is an error; then a model of two named inputs (int64 ids and floats) and two
 * outputs, whose shapes qc reports. Built and run by .ci/run. */
#include <stdint.h>
#include <stdio.h>
#include "qc.h"

/* The two-input example: ids and values in, their sum and its GELU out. */
static int two_inputs(const char *path) {
    qc_model *m = qc_load(path);
    if (!m || qc_compile(m) != 0) {
        fprintf(stderr, "two inputs: %s\n", qc_last_error());
        return 1;
    }
    for (size_t i = 0; i < qc_input_count(m); i++)
        printf("input %zu: %s (%s)\n", i, qc_input_name(m, i), qc_input_type(m, i) == QC_I64 ? "int64" : "float");
    int64_t ids[6] = {0, 1, 2, 2, 1, 0};
    float x[6] = {1, 0, -1, 0, 0, 0}, sum[6], gelu[6];
    size_t shape[2] = {2, 3};
    qc_input in[2] = {{ids, shape, 2}, {x, shape, 2}};
    qc_output out[2] = {{sum, 6, {0}, 0}, {gelu, 6, {0}, 0}};
    if (qc_run_many(m, in, 2, out, 2) != 0) {
        fprintf(stderr, "two inputs: %s\n", qc_last_error());
        return 1;
    }
    for (size_t o = 0; o < qc_output_count(m); o++)
        printf("output %s: shape %zux%zu, first %.4f\n", qc_output_name(m, o), out[o].shape[0], out[o].shape[1], out[o].data[0]);
    if (qc_run_many(m, in, 1, out, 2) == 0) {
        fprintf(stderr, "a missing input was accepted\n");
        return 1;
    }
    printf("missing input rejected: %s\n", qc_last_error());
    qc_free(m);
    return 0;
}

int main(int argc, char **argv) {
    const char *path = argc > 1 ? argv[1] : "examples/mlp.qir";
    qc_model *m = qc_load(path);
    if (!m) {
        fprintf(stderr, "load failed: %s\n", qc_last_error());
        return 1;
    }
    if (qc_compile(m) != 0) {
        fprintf(stderr, "compile failed: %s\n", qc_last_error());
        return 1;
    }
    size_t dims[8];
    int rank = qc_input_dims(m, dims, 8);
    printf("input rank %d, dims[1] = %zu\n", rank, dims[1]);
    float x[64], y[10];
    for (int i = 0; i < 64; i++) x[i] = (float)(i % 7) / 7.0f;
    size_t shape[2] = {1, 64};
    if (qc_run(m, x, shape, 2, y, 10) != 0) {
        fprintf(stderr, "run failed: %s\n", qc_last_error());
        return 1;
    }
    printf("logits:");
    for (int i = 0; i < 10; i++) printf(" %.4f", y[i]);
    printf("\n");
    size_t bad[2] = {1, 63};
    if (qc_run(m, x, bad, 2, y, 10) == 0) {
        fprintf(stderr, "a wrong shape was accepted\n");
        return 1;
    }
    printf("wrong shape rejected: %s\n", qc_last_error());
    qc_free(m);
    return two_inputs(argc > 2 ? argv[2] : "examples/two_inputs.qir");
}
