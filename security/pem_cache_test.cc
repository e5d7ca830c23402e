#include "security/pem_cache.h"

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "gtest/gtest.h"
#include "security/certs.h"
#include "security/identity.h"

namespace mkfleet::security {
namespace {

class PemCacheTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = ::testing::TempDir() + "/pem_cache_test";
    std::remove((root_ + "/ca.key").c_str());
    const absl::Time now = absl::Now();
    ASSERT_TRUE(InitCa(root_, now, absl::Hours(24)).ok());
    const Identity agent = Identity::Agent("node-a");
    dir_ = IdentityDir(root_, agent);
    ASSERT_TRUE(IssueCert(root_, CertOptions::For(agent, now, absl::Hours(24)), dir_).ok());
    creds_.ca_pem = Slurp(dir_ + "/" + kCaCertFile);
    creds_.cert_pem = Slurp(dir_ + "/" + kCertFile);
    creds_.key_pem = Slurp(dir_ + "/" + kKeyFile);
    ASSERT_FALSE(creds_.cert_pem.empty());
    ASSERT_FALSE(creds_.key_pem.empty());
  }

  static std::string Slurp(const std::string& path) {
    std::ifstream in(path);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
  }

  static BIO* Mem(const std::string& pem) { return BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())); }

  std::string dir_;
  std::string root_;
  TlsCredentials creds_;
};

TEST_F(PemCacheTest, ABlockIsDecodedOnceAndTheBioReadsOnAsItWould) {
  const PemCacheCounts before = PemCacheStats();
  const std::string chain = creds_.cert_pem + creds_.ca_pem;  // two blocks, read one after the other
  X509* first[3];
  X509* second[3];
  for (X509** out : {first, second}) {
    BIO* bio = Mem(chain);
    for (int i = 0; i < 3; ++i) out[i] = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr);
    BIO_free(bio);
  }
  ASSERT_NE(first[0], nullptr);
  ASSERT_NE(first[1], nullptr);
  EXPECT_EQ(first[2], nullptr);  // the end: nothing more in the BIO
  EXPECT_EQ(second[0], first[0]);  // the same objects, each with its own reference
  EXPECT_EQ(second[1], first[1]);
  EXPECT_EQ(second[2], nullptr);
  EXPECT_NE(X509_cmp(first[0], first[1]), 0);  // the leaf, then the CA
  EXPECT_EQ(X509_check_issued(first[1], first[0]), X509_V_OK);
  // Four reads through the cache (the CA may have been decoded when the leaf was signed).
  const PemCacheCounts after = PemCacheStats();
  EXPECT_EQ(after.misses - before.misses + after.hits - before.hits, 4);
  EXPECT_GE(after.hits - before.hits, 2);
  for (X509** out : {first, second}) {
    X509_free(out[0]);
    X509_free(out[1]);
  }

  BIO* a = Mem(creds_.key_pem);
  BIO* b = Mem(creds_.key_pem);
  EVP_PKEY* k1 = PEM_read_bio_PrivateKey(a, nullptr, nullptr, const_cast<char*>(""));  // as gRPC calls it
  EVP_PKEY* k2 = PEM_read_bio_PrivateKey(b, nullptr, nullptr, const_cast<char*>(""));
  ASSERT_NE(k1, nullptr);
  EXPECT_EQ(k1, k2);
  BIO* cert_bio = Mem(creds_.cert_pem);
  X509* cert = PEM_read_bio_X509_AUX(cert_bio, nullptr, nullptr, nullptr);
  ASSERT_NE(cert, nullptr);
  EXPECT_EQ(EVP_PKEY_eq(k1, X509_get0_pubkey(cert)), 1);  // the certificate's key
  EXPECT_EQ(BIO_pending(a), 0);                          // read to the end, as OpenSSL reads it
  EXPECT_EQ(BIO_pending(b), 0);
  EVP_PKEY_free(k1);
  EVP_PKEY_free(k2);
  X509_free(cert);
  BIO_free(a);
  BIO_free(b);
  BIO_free(cert_bio);
}

TEST_F(PemCacheTest, WhatCouldReadDifferentlyGoesToOpenSsl) {
  auto read_cert = [](BIO* bio) { return PEM_read_bio_X509(bio, nullptr, nullptr, nullptr); };
  BIO* plain = Mem(creds_.cert_pem);
  X509* cached = read_cert(plain);
  ASSERT_NE(cached, nullptr);
  BIO_free(plain);

  // Text before the block, a block of another type before it (OpenSSL skips both): the
  // certificate, decoded anew.
  for (const std::string& pem : {"a comment\n" + creds_.cert_pem, creds_.key_pem + creds_.cert_pem}) {
    const PemCacheCounts before = PemCacheStats();
    BIO* bio = Mem(pem);
    X509* c = read_cert(bio);
    ASSERT_NE(c, nullptr) << pem;
    EXPECT_NE(c, cached);
    EXPECT_EQ(X509_cmp(c, cached), 0);
    EXPECT_EQ(PemCacheStats().hits, before.hits);
    EXPECT_EQ(PemCacheStats().misses, before.misses);
    X509_free(c);
    BIO_free(bio);
  }

  // An object to fill in, and a file BIO.
  BIO* bio = Mem(creds_.cert_pem);
  X509* target = nullptr;
  X509* filled = PEM_read_bio_X509(bio, &target, nullptr, nullptr);
  ASSERT_NE(filled, nullptr);
  EXPECT_EQ(filled, target);
  EXPECT_NE(filled, cached);
  X509_free(filled);
  BIO_free(bio);
  BIO* file = BIO_new_file((dir_ + "/" + kCertFile).c_str(), "r");
  ASSERT_NE(file, nullptr);
  X509* from_file = read_cert(file);
  ASSERT_NE(from_file, nullptr);
  EXPECT_NE(from_file, cached);
  EXPECT_EQ(X509_cmp(from_file, cached), 0);
  X509_free(from_file);
  BIO_free(file);
  X509_free(cached);

  // Encrypted keys (PKCS#8, and the legacy form with its Proc-Type header): never kept, and
  // a wrong password still fails.
  BIO* key_bio = Mem(creds_.key_pem);
  EVP_PKEY* key = PEM_read_bio_PrivateKey(key_bio, nullptr, nullptr, nullptr);
  ASSERT_NE(key, nullptr);
  BIO_free(key_bio);
  char pass[] = "secret";
  char wrong[] = "wrong!";
  for (bool legacy : {false, true}) {
    BIO* out = BIO_new(BIO_s_mem());
    if (legacy) {
      ASSERT_EQ(PEM_write_bio_PrivateKey_traditional(out, key, EVP_aes_256_cbc(), nullptr, 0, nullptr, pass), 1);
    } else {
      ASSERT_EQ(PEM_write_bio_PrivateKey(out, key, EVP_aes_256_cbc(), nullptr, 0, nullptr, pass), 1);
    }
    char* data = nullptr;
    const long size = BIO_get_mem_data(out, &data);
    const std::string encrypted(data, static_cast<size_t>(size));
    BIO_free(out);
    EXPECT_NE(encrypted.find(legacy ? "Proc-Type:" : "ENCRYPTED PRIVATE KEY"), std::string::npos);
    const PemCacheCounts before = PemCacheStats();
    EVP_PKEY* read[2];
    for (EVP_PKEY*& k : read) {
      BIO* in = Mem(encrypted);
      k = PEM_read_bio_PrivateKey(in, nullptr, nullptr, pass);
      BIO_free(in);
      ASSERT_NE(k, nullptr) << legacy;
      EXPECT_EQ(EVP_PKEY_eq(k, key), 1);
    }
    EXPECT_NE(read[0], read[1]);
    BIO* in = Mem(encrypted);
    EXPECT_EQ(PEM_read_bio_PrivateKey(in, nullptr, nullptr, wrong), nullptr);
    BIO_free(in);
    EXPECT_EQ(PemCacheStats().hits, before.hits);
    EXPECT_EQ(PemCacheStats().misses, before.misses);
    EVP_PKEY_free(read[0]);
    EVP_PKEY_free(read[1]);
  }
  EVP_PKEY_free(key);
}

}  // namespace
}  // namespace mkfleet::security
