/* Prints "SCORE PATH" for each ggml CPU backend library named on the command line: the score that ggml itself
 * ranks them by when it picks one (0: this CPU lacks an instruction set that the library was compiled for).
 * The image's entrypoint probes the variants in this order, best first (see entrypoint.sh). */
#include <dlfcn.h>
#include <stdio.h>

typedef int (*score_fn)(void);

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        void *lib = dlopen(argv[i], RTLD_NOW | RTLD_LOCAL);
        if (!lib) {
            fprintf(stderr, "r1kit-cpu-variants: %s\n", dlerror());
            continue;
        }
        score_fn score = (score_fn) dlsym(lib, "ggml_backend_score");
        printf("%d %s\n", score ? score() : 0, argv[i]);
        dlclose(lib);
    }
    return 0;
}
