// kstatus reads one Kubernetes object as JSON on standard input and prints how kstatus (the
// library Flux and kpt use to decide whether an object is ready) judges it, as one JSON line:
//
//	{"status":"Current","message":"Resource is Ready"}
//
// The tests feed it live TatorDeployments to check that the operator's conditions mean to Flux
// what they mean to people. It talks to no server.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type result struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

func main() {
	data, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail("reading standard input: %v", err)
	}
	// UnmarshalJSON keeps integers as int64, as kstatus expects them (encoding/json would not).
	obj := &unstructured.Unstructured{}
	if err := obj.UnmarshalJSON(data); err != nil {
		fail("standard input is not a Kubernetes object in JSON: %v", err)
	}
	res, err := status.Compute(obj)
	if err != nil {
		fail("kstatus: %v", err)
	}
	out, err := json.Marshal(result{Status: res.Status.String(), Message: res.Message})
	if err != nil {
		fail("encoding the result: %v", err)
	}
	fmt.Println(string(out))
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "kstatus: "+format+"\n", args...)
	os.Exit(2)
}
