/*
 * graphrouter-simulate: play Microsoft Graph against a graphrouter (or any
 * webhook receiver), without a Microsoft tenant.
 *
 *   graphrouter-simulate keys --out DIR
 *   graphrouter-simulate notify --client-state S [--type T] [--rich --keys DIR --app-id A]
 *                               [--url URL]
 *
 * `keys` makes what a subscriber holds (an encryption key pair with its
 * self-signed certificate) and what Entra ID holds (a token-signing key,
 * published as a JWKS). `notify` builds change notifications of any resource
 * type, basic, rich (encrypted to the certificate, with validation tokens
 * signed by the signing key) or lifecycle, and POSTs them or prints them.
 * Options to spoil tokens and ciphertext exist for testing receivers. See
 * the README, "Simulating Graph".
 */
#define _GNU_SOURCE
#include <curl/curl.h>
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "crypto/keyfile.h"
#include "payloads.h"
#include "simcrypto.h"
#include "util.h"

#define GRAPH_CHANGE_TRACKING_APP "0bf30f3b-4a52-48df-9a82-234910c4a086"
#define MAX_TENANTS 16

static void usage(FILE *out)
{
    fprintf(out,
"usage: graphrouter-simulate keys --out DIR [--kid KID] [--cert-id ID] [--bits N] [--days N]\n"
"       graphrouter-simulate notify --client-state SECRET [options] [--url URL]\n"
"       graphrouter-simulate types\n"
"\n"
"keys     writes DIR/encryption-key.pem (mode 0600; list it in decryption_keys),\n"
"         DIR/encryption-cert.pem, DIR/encryption-cert.b64 (a subscription's\n"
"         encryptionCertificate), DIR/signing-key.pem (0600) and DIR/jwks.json\n"
"         (validation_tokens.jwks_file), and prints what to configure.\n"
"\n"
"notify   builds a changeNotificationCollection and POSTs it to --url (printing the\n"
"         HTTP status; exit 0 on 2xx) or prints it.\n"
"  --type TYPE            resource type (graphrouter-simulate types); default message\n"
"  --change TYPE          created, updated or deleted; default created (updated for presence)\n"
"  --lifecycle EVENT      lifecycle items instead: reauthorizationRequired,\n"
"                         subscriptionRemoved, missed\n"
"  --count N              items per tenant; default 1\n"
"  --tenant ID            a tenant; repeat for items of several tenants in one POST\n"
"  --subscription ID      default: a random id\n"
"  --client-state SECRET  the subscription's clientState (required)\n"
"  --rich                 encrypt the resource and add validation tokens; needs --app-id and\n"
"                         --keys DIR (or --cert, --signing-key and --kid)\n"
"  --keys DIR             a directory written by `keys`\n"
"  --cert FILE --cert-id ID --signing-key FILE --kid KID\n"
"  --app-id ID            your application id: the tokens' audience\n"
"  --content FILE         the resource JSON to encrypt (default: a realistic one)\n"
"  --token-version 1|2    v1 (appid, sts.windows.net) or v2 (azp) tokens; default 2\n"
"  --token-claims JSON    claims merged over the defaults; null removes one\n"
"  --token-alg ALG        the header's alg: RS256; none (unsigned) and HS256 (HMAC keyed\n"
"                         with the public key: key confusion) make attack tokens\n"
"  --token-kid KID        the header's kid (default the signing key's)\n"
"  --tokens MODE          normal, none (no validationTokens), null, or empty\n"
"  --cert-ref WHAT        id, thumbprint or both (default) in encryptedContent\n"
"  --tamper WHAT          data, mac, key or padding: spoil the encryptedContent\n"
"  --aes-bits N           the AES key: 256 (as Graph), 192 or 128\n"
"  --url URL              where to POST; --ca-file FILE trusts a private CA for https\n");
}

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "graphrouter-simulate: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(2);
}

static char *path_in(const char *dir, const char *name)
{
    return gr_xprintf("%s/%s", dir, name);
}

/* ---- keys -------------------------------------------------------------- */

/* mkdir -p; the last directory is private (it holds private keys). */
static int make_dirs(const char *path)
{
    char *p = gr_xstrdup(path);
    int rc = 0;
    for (char *s = p + 1; *s && rc == 0; s++) {
        if (*s != '/')
            continue;
        *s = '\0';
        if (mkdir(p, 0755) != 0 && errno != EEXIST)
            rc = -1;
        *s = '/';
    }
    if (rc == 0 && mkdir(p, 0700) != 0 && errno != EEXIST)
        rc = -1;
    free(p);
    return rc;
}

static int cmd_keys(int argc, char **argv)
{
    static const struct option opts[] = {{"out", required_argument, NULL, 'o'},
                                         {"kid", required_argument, NULL, 'k'},
                                         {"cert-id", required_argument, NULL, 'i'},
                                         {"bits", required_argument, NULL, 'b'},
                                         {"days", required_argument, NULL, 'd'},
                                         {NULL, 0, NULL, 0}};
    const char *out = NULL, *kid = NULL, *cert_id = "graphrouter-simulate";
    int bits = 2048, days = 365, c;
    char kid_buf[37];
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'o': out = optarg; break;
        case 'k': kid = optarg; break;
        case 'i': cert_id = optarg; break;
        case 'b': bits = atoi(optarg); break;
        case 'd': days = atoi(optarg); break;
        default: usage(stderr); return 2;
        }
    }
    if (!out)
        die("keys: --out DIR is required");
    if (bits < 2048 || bits > 4096)
        die("keys: --bits must be 2048 to 4096 (what Graph accepts)");
    if (!kid) {
        sim_guid(kid_buf);
        kid = kid_buf;
    }
    if (make_dirs(out) != 0)
        die("cannot create %s: %s", out, strerror(errno));

    EVP_PKEY *enc = sim_rsa_key(bits), *sign = sim_rsa_key(2048);
    X509 *cert = enc ? sim_self_signed(enc, "graphrouter-simulate", days) : NULL;
    if (!sign || !cert)
        die("key generation failed");
    char *files[] = {path_in(out, "encryption-key.pem"), path_in(out, "encryption-cert.pem"),
                     path_in(out, "encryption-cert.b64"), path_in(out, "signing-key.pem"),
                     path_in(out, "jwks.json"), path_in(out, "kid")};
    char *b64 = gr_keyfile_cert_base64(cert);
    json_t *jwks = sim_jwks(sign, kid);
    FILE *f;
    if (sim_write_key(files[0], enc) || sim_write_cert(files[1], cert) ||
        !(f = fopen(files[2], "w")) || fprintf(f, "%s\n", b64) < 0 || fclose(f) ||
        sim_write_key(files[3], sign) || json_dump_file(jwks, files[4], JSON_INDENT(2)) ||
        !(f = fopen(files[5], "w")) || fprintf(f, "%s\n", kid) < 0 || fclose(f))
        die("cannot write the files in %s: %s", out, strerror(errno));
    char tp[41];
    gr_keyfile_thumbprint(cert, tp);
    printf("encryptionCertificate (base64 DER, for the subscription; also in %s):\n%s\n\n"
           "encryption certificate thumbprint: %s\n"
           "token signing key kid:             %s\n"
           "\n",
           files[2], b64, tp, kid);
    printf("In graphrouter's configuration:\n"
           "  \"decryption_keys\": [{\"certificate_id\": \"%s\", \"private_key_file\": \"%s\",\n"
           "                       \"certificate_file\": \"%s\"}],\n"
           "  \"validation_tokens\": {\"app_ids\": [\"<your app id>\"], \"jwks_file\": \"%s\"}\n"
           "\n"
           "A real subscription's encryptionCertificateId is \"%s\" and its\n"
           "encryptionCertificate the contents of %s.\n",
           cert_id, files[0], files[1], files[4], cert_id, files[2]);
    for (size_t i = 0; i < GR_ARRAY_LEN(files); i++)
        free(files[i]);
    free(b64);
    json_decref(jwks);
    X509_free(cert);
    EVP_PKEY_free(enc);
    EVP_PKEY_free(sign);
    return 0;
}

/* ---- notify ------------------------------------------------------------ */

struct notify {
    const char *type, *change, *lifecycle, *subscription, *client_state, *app_id;
    const char *tenants[MAX_TENANTS];
    size_t ntenants;
    int count;
    bool rich;
    const char *keys_dir, *cert_file, *cert_id, *signing_key_file, *kid, *content_file;
    int token_version;
    const char *token_claims, *token_alg, *token_kid, *tokens_mode, *cert_ref;
    enum sim_tamper tamper;
    int aes_bits;
    char *owned_kid; /* read from DIR/kid */
    const char *url, *ca_file;
    X509 *cert;
    EVP_PKEY *signing_key;
};

static char *read_text(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        die("cannot open %s: %s", path, strerror(errno));
    struct gr_buf b = {0};
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        gr_buf_append(&b, chunk, n);
    fclose(f);
    return b.data ? b.data : gr_xstrdup("");
}

static void load_rich_keys(struct notify *n)
{
    char *cert = NULL, *key = NULL, *kid = NULL;
    if (n->keys_dir) {
        cert = path_in(n->keys_dir, "encryption-cert.pem");
        key = path_in(n->keys_dir, "signing-key.pem");
        char *kid_file = path_in(n->keys_dir, "kid");
        kid = read_text(kid_file);
        kid[strcspn(kid, "\r\n")] = '\0';
        free(kid_file);
    }
    const char *cert_path = n->cert_file ? n->cert_file : cert;
    const char *key_path = n->signing_key_file ? n->signing_key_file : key;
    if (!cert_path || !key_path || !(n->kid || kid))
        die("--rich needs --keys DIR, or --cert, --signing-key and --kid");
    if (!(n->cert = sim_read_cert(cert_path)))
        die("%s: no PEM certificate", cert_path);
    if (!(n->signing_key = sim_read_key(key_path)))
        die("%s: no PEM private key", key_path);
    if (!n->kid)
        n->kid = n->owned_kid = kid;
    else
        free(kid);
    free(cert);
    free(key);
}

static json_t *token_for(const struct notify *n, const char *tenant)
{
    time_t now = time(NULL);
    char oid[37], uti[37];
    sim_guid(oid);
    sim_guid(uti);
    json_t *claims;
    if (n->token_version == 1) {
        char *iss = gr_xprintf("https://sts.windows.net/%s/", tenant);
        claims = json_pack("{s:s,s:s,s:I,s:I,s:I,s:s,s:s,s:s,s:s,s:s,s:s}", "aud", n->app_id,
                           "iss", iss, "iat", (json_int_t)now - 60, "nbf", (json_int_t)now - 60,
                           "exp", (json_int_t)now + 3600, "appid", GRAPH_CHANGE_TRACKING_APP,
                           "appidacr", "2", "idp", iss, "tid", tenant, "uti", uti, "ver", "1.0");
        free(iss);
    } else {
        char *iss = gr_xprintf("https://login.microsoftonline.com/%s/v2.0", tenant);
        claims = json_pack("{s:s,s:s,s:I,s:I,s:I,s:s,s:s,s:s,s:s,s:s,s:s,s:s}", "aud", n->app_id,
                           "iss", iss, "iat", (json_int_t)now - 60, "nbf", (json_int_t)now - 60,
                           "exp", (json_int_t)now + 3600, "azp", GRAPH_CHANGE_TRACKING_APP,
                           "azpacr", "2", "oid", oid, "sub", oid, "tid", tenant, "uti", uti, "ver",
                           "2.0");
        free(iss);
    }
    if (n->token_claims) {
        json_error_t err;
        json_t *extra = json_loads(n->token_claims, 0, &err);
        if (!json_is_object(extra))
            die("--token-claims: not a JSON object: %s", err.text);
        const char *k;
        json_t *v;
        json_object_foreach(extra, k, v) {
            if (json_is_null(v))
                json_object_del(claims, k);
            else
                json_object_set(claims, k, v);
        }
        json_decref(extra);
    }
    char *token = sim_jwt(n->signing_key, n->token_kid ? n->token_kid : n->kid,
                          n->token_alg ? n->token_alg : "RS256", claims);
    json_decref(claims);
    json_t *t = json_string(token);
    free(token);
    return t;
}

static json_t *build_item(const struct notify *n, const char *tenant, const char *subscription)
{
    char expires[32], user[37];
    time_t later = time(NULL) + 3600;
    struct tm tm;
    gmtime_r(&later, &tm);
    strftime(expires, sizeof expires, "%Y-%m-%dT%H:%M:%S.0000000Z", &tm);
    json_t *item = json_pack("{s:s,s:s,s:s,s:s}", "subscriptionId", subscription,
                             "subscriptionExpirationDateTime", expires, "clientState",
                             n->client_state, "tenantId", tenant);
    if (n->lifecycle) {
        json_object_set_new(item, "lifecycleEvent", json_string(n->lifecycle));
        return item;
    }
    sim_guid(user);
    struct sim_resource r;
    if (sim_resource_new(n->type, user, &r) < 0)
        die("unknown --type %s (see graphrouter-simulate types)", n->type);
    const char *change = n->change ? n->change
                         : strcmp(n->type, "presence") == 0 || strcmp(n->type, "driveItem") == 0
                             ? "updated"
                             : "created";
    json_object_set_new(item, "changeType", json_string(change));
    json_object_set_new(item, "resource", json_string(r.resource));
    json_object_set(item, "resourceData", r.resource_data);
    if (strcmp(n->type, "presence") == 0)
        json_object_set_new(item, "organizationId", json_string(tenant));
    if (n->rich) {
        char *plain = n->content_file ? read_text(n->content_file)
                                      : json_dumps(r.content, JSON_COMPACT);
        const char *ref = n->cert_ref ? n->cert_ref : "both";
        bool with_id = strcmp(ref, "thumbprint") != 0, with_tp = strcmp(ref, "id") != 0;
        json_object_set_new(item, "encryptedContent",
                            sim_encrypt(plain, n->cert, n->cert_id, with_id, with_tp, n->tamper,
                                        n->aes_bits));
        free(plain);
    }
    sim_resource_free(&r);
    return item;
}

static json_t *build(struct notify *n)
{
    char sub[37];
    if (!n->subscription)
        sim_guid(sub);
    const char *subscription = n->subscription ? n->subscription : sub;
    json_t *value = json_array();
    for (size_t t = 0; t < n->ntenants; t++)
        for (int i = 0; i < n->count; i++)
            json_array_append_new(value, build_item(n, n->tenants[t], subscription));
    json_t *doc = json_pack("{s:o}", "value", value);
    if (!n->rich)
        return doc;
    const char *mode = n->tokens_mode ? n->tokens_mode : "normal";
    if (strcmp(mode, "null") == 0) {
        json_object_set_new(doc, "validationTokens", json_null());
    } else if (strcmp(mode, "empty") == 0) {
        json_object_set_new(doc, "validationTokens", json_array());
    } else if (strcmp(mode, "normal") == 0) {
        json_t *tokens = json_array(); /* one per tenant (and app), as Graph does */
        for (size_t t = 0; t < n->ntenants; t++)
            json_array_append_new(tokens, token_for(n, n->tenants[t]));
        json_object_set_new(doc, "validationTokens", tokens);
    } else if (strcmp(mode, "none") != 0) {
        die("--tokens: normal, none, null or empty");
    }
    return doc;
}

static size_t discard(char *data, size_t size, size_t nmemb, void *userp)
{
    struct gr_buf *b = userp;
    if (b->len < 4096)
        gr_buf_append(b, data, size * nmemb);
    return size * nmemb;
}

static int post(const struct notify *n, const char *body)
{
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != 0)
        die("libcurl failed to initialise");
    CURL *c = curl_easy_init();
    struct curl_slist *headers = curl_slist_append(NULL, "Content-Type: application/json");
    struct gr_buf reply = {0};
    char errbuf[CURL_ERROR_SIZE] = "";
    curl_easy_setopt(c, CURLOPT_URL, n->url);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "graphrouter-simulate/" GR_VERSION);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 30000L);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &reply);
    if (n->ca_file)
        curl_easy_setopt(c, CURLOPT_CAINFO, n->ca_file);
    CURLcode rc = curl_easy_perform(c);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(headers);
    curl_easy_cleanup(c);
    curl_global_cleanup();
    if (rc != CURLE_OK) {
        fprintf(stderr, "graphrouter-simulate: POST %s failed: %s\n", n->url,
                *errbuf ? errbuf : curl_easy_strerror(rc));
        gr_buf_free(&reply);
        return 1;
    }
    printf("HTTP %ld%s%.*s", status, reply.len ? " " : "", (int)reply.len,
           reply.data ? reply.data : "");
    if (!reply.len || reply.data[reply.len - 1] != '\n')
        printf("\n");
    gr_buf_free(&reply);
    return status >= 200 && status < 300 ? 0 : 1;
}

static int cmd_notify(int argc, char **argv)
{
    static const struct option opts[] = {
        {"type", required_argument, NULL, 'T'},          {"change", required_argument, NULL, 'C'},
        {"lifecycle", required_argument, NULL, 'L'},     {"count", required_argument, NULL, 'n'},
        {"tenant", required_argument, NULL, 't'},        {"subscription", required_argument, NULL, 's'},
        {"client-state", required_argument, NULL, 'c'},  {"rich", no_argument, NULL, 'r'},
        {"keys", required_argument, NULL, 'K'},          {"cert", required_argument, NULL, 'e'},
        {"cert-id", required_argument, NULL, 'i'},       {"signing-key", required_argument, NULL, 'S'},
        {"kid", required_argument, NULL, 'k'},           {"app-id", required_argument, NULL, 'a'},
        {"content", required_argument, NULL, 'f'},       {"token-version", required_argument, NULL, 'v'},
        {"token-claims", required_argument, NULL, 'j'},  {"token-alg", required_argument, NULL, 'A'},
        {"token-kid", required_argument, NULL, 'D'},     {"tokens", required_argument, NULL, 'M'},
        {"cert-ref", required_argument, NULL, 'R'},      {"tamper", required_argument, NULL, 'X'},
        {"url", required_argument, NULL, 'u'},           {"ca-file", required_argument, NULL, 'P'},
        {"aes-bits", required_argument, NULL, 'B'},
        {NULL, 0, NULL, 0}};
    struct notify n = {.type = "message", .count = 1, .token_version = 2,
                       .cert_id = "graphrouter-simulate", .aes_bits = 256};
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'T': n.type = optarg; break;
        case 'C': n.change = optarg; break;
        case 'L': n.lifecycle = optarg; break;
        case 'n': n.count = atoi(optarg); break;
        case 't':
            if (n.ntenants == MAX_TENANTS)
                die("at most %d --tenant", MAX_TENANTS);
            n.tenants[n.ntenants++] = optarg;
            break;
        case 's': n.subscription = optarg; break;
        case 'c': n.client_state = optarg; break;
        case 'r': n.rich = true; break;
        case 'K': n.keys_dir = optarg; break;
        case 'e': n.cert_file = optarg; break;
        case 'i': n.cert_id = optarg; break;
        case 'S': n.signing_key_file = optarg; break;
        case 'k': n.kid = optarg; break;
        case 'a': n.app_id = optarg; break;
        case 'f': n.content_file = optarg; break;
        case 'v': n.token_version = atoi(optarg); break;
        case 'j': n.token_claims = optarg; break;
        case 'A': n.token_alg = optarg; break;
        case 'D': n.token_kid = optarg; break;
        case 'M': n.tokens_mode = optarg; break;
        case 'R': n.cert_ref = optarg; break;
        case 'X':
            n.tamper = strcmp(optarg, "data") == 0  ? SIM_TAMPER_DATA
                       : strcmp(optarg, "mac") == 0 ? SIM_TAMPER_MAC
                       : strcmp(optarg, "key") == 0 ? SIM_TAMPER_KEY
                       : strcmp(optarg, "padding") == 0 ? SIM_TAMPER_PADDING
                                                        : SIM_TAMPER_NONE;
            if (n.tamper == SIM_TAMPER_NONE)
                die("--tamper: data, mac, key or padding");
            break;
        case 'u': n.url = optarg; break;
        case 'P': n.ca_file = optarg; break;
        case 'B':
            n.aes_bits = atoi(optarg);
            if (n.aes_bits != 128 && n.aes_bits != 192 && n.aes_bits != 256)
                die("--aes-bits: 128, 192 or 256");
            break;
        default: usage(stderr); return 2;
        }
    }
    if (!n.client_state)
        die("notify: --client-state is required (the secret your receiver expects)");
    if (n.count < 1 || n.count > 10000)
        die("notify: --count must be 1 to 10000");
    if (n.token_version != 1 && n.token_version != 2)
        die("notify: --token-version is 1 or 2");
    char tenant[37];
    if (!n.ntenants) {
        sim_guid(tenant);
        n.tenants[n.ntenants++] = tenant;
    }
    if (n.rich) {
        if (!n.app_id)
            die("notify: --rich needs --app-id (your application id, the tokens' audience)");
        if (n.lifecycle)
            die("notify: lifecycle notifications carry no resource data; drop --rich");
        load_rich_keys(&n);
    }
    json_t *doc = build(&n);
    char *body = json_dumps(doc, n.url ? JSON_COMPACT : JSON_INDENT(2));
    json_decref(doc);
    int rc = 0;
    if (n.url)
        rc = post(&n, body);
    else
        printf("%s\n", body);
    free(body);
    X509_free(n.cert);
    EVP_PKEY_free(n.signing_key);
    free(n.owned_kid);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *cmd = argv[1];
    argv[1] = argv[0];
    if (strcmp(cmd, "keys") == 0)
        return cmd_keys(argc - 1, argv + 1);
    if (strcmp(cmd, "notify") == 0)
        return cmd_notify(argc - 1, argv + 1);
    if (strcmp(cmd, "types") == 0) {
        for (const char *const *t = sim_types; *t; t++)
            printf("%s\n", *t);
        return 0;
    }
    if (strcmp(cmd, "--version") == 0) {
        printf("graphrouter-simulate %s\n", GR_VERSION);
        return 0;
    }
    usage(stderr);
    return 2;
}
