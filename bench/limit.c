/*
 * limit.c - the fastest a client can go through libcurl: one keep-alive easy
 * handle, a prebuilt body, curl_easy_perform in a loop, the answer thrown
 * away. The sync identify bar is measured against this.
 *
 *   limit URL API_KEY N   -> prints calls per second
 */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

/* The seed identify body, as sendx encodes it. */
static const char body[] =
    "{\"email\":\"john.doe@gmail.com\",\"firstName\":\"John\",\"lastName\":\"Doe\","
    "\"birthday\":\"1989-03-03\",\"customFields\":{\"Designation\":\"Software Engineer\","
    "\"Age\":27,\"Team\":\"API\"},\"tags\":[\"Developer\",\"Tech\"]}";

static size_t discard(char *p, size_t s, size_t n, void *ud)
{
    (void)p;
    (void)ud;
    return s * n;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    CURL *h;
    struct curl_slist *hd = NULL;
    char auth[256];
    long i, n, status = 0;
    double t0;
    if (argc != 4) {
        fprintf(stderr, "usage: %s URL API_KEY N\n", argv[0]);
        return 2;
    }
    n = atol(argv[3]);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    h = curl_easy_init();
    snprintf(auth, sizeof auth, "api_key: %s", argv[2]);
    hd = curl_slist_append(hd, "Content-Type: application/json");
    hd = curl_slist_append(hd, "Accept: application/json");
    hd = curl_slist_append(hd, "Expect:");
    hd = curl_slist_append(hd, auth);
    curl_easy_setopt(h, CURLOPT_URL, argv[1]);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hd);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)(sizeof body - 1));
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, discard);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    for (i = 0; i < n / 10 + 1; i++) /* warm up: connection, caches */
        curl_easy_perform(h);
    t0 = now();
    for (i = 0; i < n; i++) {
        if (curl_easy_perform(h) != CURLE_OK ||
            curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status) != CURLE_OK || status != 200) {
            fprintf(stderr, "limit: call %ld failed (status %ld)\n", i, status);
            return 1;
        }
    }
    printf("%.1f\n", n / (now() - t0));
    curl_easy_cleanup(h);
    curl_slist_free_all(hd);
    curl_global_cleanup();
    return 0;
}
