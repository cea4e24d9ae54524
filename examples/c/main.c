/* Embeds qc from C: load the example MLP, compile it with the JIT, run one input, and show that a
 * wrong input is an error. Built and run by .ci/run. */
#include <stdio.h>
#include "qc.h"

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
    return 0;
}
