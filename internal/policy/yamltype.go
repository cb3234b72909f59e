package policy

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// A value of the wrong type (ports: 443) is reported in the policy's words, with an example of the
// right form, instead of yaml's "cannot unmarshal !!int `443` into []int".

// unmarshalRE matches yaml.v3's message for a value of the wrong type. The value is cut to seven
// characters and "..." when it is long.
var unmarshalRE = regexp.MustCompile("(?s)^cannot unmarshal (!\\S*)(?: `(.*)`)? into (\\S+)$")

// keyExamples are a right value for each key of the file format.
var keyExamples = map[string]string{
	"version": "1", "mode": "enforce", "host": "api.github.com", "cidr": "10.0.0.0/8", "ports": "[443]",
	"name": "github-api", "comment": "why this rule exists", "access": ReadOnly, "inspect": "true",
	"http": `[{methods: [GET], paths: ["/repos/**"]}]`, "inject": `[{header: Authorization, value: "Bearer {{secret:NAME}}"}]`,
	"secrets": "[github]", "methods": "[GET, POST]", "paths": `["/api/**"]`, "header": "Authorization", "value": `"Bearer {{secret:NAME}}"`,
	"allow": "[{host: api.github.com, ports: [443]}]", "deny": `[{host: "*.pastebin.com"}]`,
	"nat64_prefixes": `["2001:db8:64::/96"]`,
}

// typeMessage says what is wrong with the value yaml could not decode at line, given yaml's message
// m (without its "line N: " prefix); ok is false when m is not a type mismatch it knows.
func typeMessage(doc *yaml.Node, line int, m string) (msg string, ok bool) {
	sm := unmarshalRE.FindStringSubmatch(m)
	if sm == nil {
		return "", false
	}
	tag, value, goType := sm[1], sm[2], sm[3]
	if goType == "policy.File" {
		return `a policy file is a mapping of version, mode, allow, deny and nat64_prefixes, e.g. "mode: enforce"`, true
	}
	key, node, item := keyAt(doc, line, tag, value)
	if key == "" {
		what := strconv.Quote(value)
		if value == "" {
			what = "the value"
		}
		return fmt.Sprintf("%s (%s) is not %s", what, tag, goWords(goType)), true
	}
	if tag != "!!map" && tag != "!!seq" {
		value = node.Value // yaml's message cuts long values
	}
	example := keyExamples[key]
	if key == "ports" && tag == "!!int" && !item {
		example = "[" + value + "]" // ports: 443 → ports: [443]
	}
	if example == "" {
		example = "..."
	}
	shown := value
	if shown == "" {
		shown = map[string]string{"!!map": "a mapping", "!!seq": "a list"}[tag]
	} else {
		shown = strconv.Quote(shown)
	}
	switch {
	case item && goType == "int":
		return fmt.Sprintf("%s: %s is not a port number; write the number, e.g. %s: %s", key, shown, key, example), true
	case item && strings.HasPrefix(goType, "policy."):
		return fmt.Sprintf("each entry of %s must be a mapping, not %s; e.g. %s: %s", key, shown, key, example), true
	case item:
		return fmt.Sprintf("each entry of %s must be a single value, not %s; e.g. %s: %s", key, shown, key, example), true
	case strings.HasPrefix(goType, "[]"):
		return fmt.Sprintf("%s must be a list, e.g. %s: %s", key, key, example), true
	case goType == "bool":
		return fmt.Sprintf("%s must be true or false, not %s", key, shown), true
	case goType == "int":
		return fmt.Sprintf("%s must be a number, e.g. %s: %s", key, key, example), true
	case goType == "string":
		return fmt.Sprintf("%s must be a single value, not %s; e.g. %s: %s", key, shown, key, example), true
	}
	return fmt.Sprintf("%s has the wrong form; e.g. %s: %s", key, key, example), true
}

// goWords names the form a Go type of the file format stands for.
func goWords(goType string) string {
	switch {
	case goType == "policy.RuleSpec":
		return "a rule, a mapping like {host: api.github.com}"
	case goType == "policy.HTTPSpec":
		return `an http entry, a mapping like {methods: [GET], paths: ["/**"]}`
	case goType == "policy.InjectSpec":
		return `a header injection, a mapping like {header: Authorization, value: "Bearer {{secret:NAME}}"}`
	case strings.HasPrefix(goType, "[]"):
		return "a list"
	case goType == "int":
		return "a number"
	case goType == "bool":
		return "true or false"
	}
	return "a single value"
}

// keyAt finds the value yaml could not decode: the node on line with tag whose value starts as
// value does. It returns the node and the key it is the value of, or, for an entry of a list, the key
// of the list and item true.
func keyAt(n *yaml.Node, line int, tag, value string) (key string, node *yaml.Node, item bool) {
	matches := func(v *yaml.Node) bool {
		if v.Line != line || v.ShortTag() != tag {
			return false
		}
		if p, cut := strings.CutSuffix(value, "..."); cut {
			return strings.HasPrefix(v.Value, p)
		}
		return value == "" || v.Value == value
	}
	switch n.Kind {
	case yaml.DocumentNode, yaml.SequenceNode:
		for _, c := range n.Content {
			if k, v, it := keyAt(c, line, tag, value); k != "" {
				return k, v, it
			}
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			// Deepest first: a block list starts on the line of its first entry.
			if found, fv, it := keyAt(v, line, tag, value); found != "" {
				return found, fv, it
			}
			if v.Kind == yaml.SequenceNode {
				for _, e := range v.Content {
					if matches(e) {
						return k.Value, e, true
					}
				}
			}
			if matches(v) {
				return k.Value, v, false
			}
		}
	}
	return "", nil, false
}
