//! Readable kernel names. C++ kernels come from CUPTI as Itanium-mangled names
//! (`_ZN8cublasLt19splitKreduce_kernelILi32E…`); `cpp_demangle` reads them, and a table wants
//! less than all it gives back: CUTLASS's and cuBLASLt's template arguments nest a dozen levels
//! and run to kilobytes.

use cpp_demangle::{DemangleOptions, Symbol};

/// A readable name for a kernel: for a C++ kernel its qualified name with template arguments
/// one level deep and deeper ones as `<…>`, without the return and parameter types:
/// `cublasLt::splitKreduce_kernel<32, 16, int, float, false>`. Names that are not mangled
/// (extern "C" kernels, tperf's own) and names `cpp_demangle` cannot read come back as they are.
pub fn readable_name(raw: &str) -> String {
    if !raw.starts_with("_Z") {
        return raw.to_string();
    }
    let options = DemangleOptions::new().no_params().no_return_type();
    match Symbol::new(raw).map(|s| s.demangle_with_options(&options)) {
        Ok(Ok(name)) if !name.is_empty() => elide_nested_template_args(&name),
        _ => raw.to_string(),
    }
}

/// Operators whose names hold angle brackets, longest first so that `operator<<=` is not read as
/// `operator<` followed by `<=`.
const ANGLE_OPERATORS: [&str; 11] = [
    "<<=", ">>=", "<=>", "->*", "<<", ">>", "<=", ">=", "->", "<", ">",
];

/// Replaces every template-argument list nested inside another by `<…>`, in a demangled name.
/// Angle brackets are template brackets except in operator names and inside parentheses (a
/// function type's parameters, or an expression argument such as `(1)>(2)`, which the demangler
/// parenthesises): text in parentheses is kept as it is. The demangler writes `> >` for `>>`;
/// the space goes once the inner list is elided.
fn elide_nested_template_args(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    // The brackets open at this point: true for a template-argument list, false for a
    // parenthesis.
    let mut open: Vec<bool> = Vec::new();
    let mut depth = 0usize;
    let mut rest = name;
    while let Some(c) = rest.chars().next() {
        if let Some(after) = rest.strip_prefix("operator") {
            let at_word_start = !out
                .chars()
                .next_back()
                .is_some_and(|p| p.is_alphanumeric() || p == '_');
            if let Some(op) = ANGLE_OPERATORS.iter().find(|op| after.starts_with(**op)) {
                if at_word_start {
                    let len = "operator".len() + op.len();
                    if depth <= 1 {
                        out.push_str(&rest[..len]);
                    }
                    rest = &rest[len..];
                    continue;
                }
            }
        }
        rest = &rest[c.len_utf8()..];
        let in_parens = open.last() == Some(&false);
        match c {
            '<' if !in_parens => {
                match depth {
                    0 => out.push('<'),
                    1 => out.push_str("<…"),
                    _ => {}
                }
                open.push(true);
                depth += 1;
            }
            '>' if open.last() == Some(&true) => {
                open.pop();
                depth -= 1;
                if depth <= 1 {
                    if out.ends_with("> ") {
                        out.pop();
                    }
                    out.push('>');
                }
            }
            '(' => {
                open.push(false);
                if depth <= 1 {
                    out.push(c);
                }
            }
            ')' if in_parens => {
                open.pop();
                if depth <= 1 {
                    out.push(c);
                }
            }
            _ if depth <= 1 => out.push(c),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readable_names() {
        // extern "C" kernels, and names that are not mangled, stay as they are.
        assert_eq!(readable_name("residual_add"), "residual_add");
        assert_eq!(
            readable_name("nvjet_hsh_128x256_64x4_2x1_v_bz_coopA_NNT"),
            "nvjet_hsh_128x256_64x4_2x1_v_bz_coopA_NNT"
        );
        assert_eq!(readable_name("_Z9my_kernelPfi"), "my_kernel");
        // Literals, bools and types in template arguments.
        assert_eq!(
            readable_name("_ZN8cublasLt19splitKreduce_kernelILi32ELi16EifLb0EEEvPKT1_"),
            "cublasLt::splitKreduce_kernel<32, 16, int, float, false>"
        );
        // A class template argument, its own arguments elided.
        assert_eq!(
            readable_name("_ZN7cutlass6KernelINS_4gemm6kernel4GemmIfLi2EEEEEvNT_6ParamsE"),
            "cutlass::Kernel<cutlass::gemm::kernel::Gemm<…>>"
        );
        // S_ is the first recorded prefix (cutlass), S1_ the third (cutlass::gemm).
        assert_eq!(
            readable_name("_ZN7cutlass6KernelINS_4gemm6kernel4GemmIfEENS1_5ShapeEEEvv"),
            "cutlass::Kernel<cutlass::gemm::kernel::Gemm<…>, cutlass::gemm::Shape>"
        );
        // Pointers, const, std and anonymous namespaces, negative literals.
        assert_eq!(
            readable_name("_ZN12_GLOBAL__N_13fooIPKfSt7complexIdELin3EEEvv"),
            "(anonymous namespace)::foo<float const*, std::complex<…>, -3>"
        );
        // Local names.
        assert_eq!(readable_name("_ZZ4mainE1x"), "main::x");
        // Malformed names come back whole.
        assert_eq!(readable_name("_ZN3foo"), "_ZN3foo");
        assert_eq!(readable_name("_Z999x"), "_Z999x");
    }

    #[test]
    fn operators_and_parentheses_are_not_template_brackets() {
        // `operator<` of a class template: the `<` opens nothing.
        assert_eq!(
            readable_name("_ZNK3foo3barIiEltERKS1_"),
            "foo::bar<int>::operator<"
        );
        assert_eq!(
            readable_name("_ZN3foo3barINS_3bazIiEEEclEv"),
            "foo::bar<foo::baz<…>>::operator()"
        );
        // A function type as a template argument keeps its parameter list.
        assert_eq!(
            readable_name("_ZN3fooIFvN3bazIiEEEEEvv"),
            "foo<void (baz<int>)>"
        );
        // A word ending in "operator" is a name like any other.
        assert_eq!(
            elide_nested_template_args("my_operator<a<b>>"),
            "my_operator<a<…>>"
        );
        assert_eq!(
            elide_nested_template_args("a<b<c<d> > >::operator<<"),
            "a<b<…>>::operator<<"
        );
    }
}
